"""Application bundles: safe extraction of colcon-bundle v1 / v2 and plain ROS tarballs, and sourcing them.

Used by the simulation runner and by the robot agent.
"""

from openrobomaker.bundles.errors import BundleError, BundleErrorCategory
from openrobomaker.bundles.formats import BundleOverlay, ExtractedBundle, extract_bundle, find_setup_script
from openrobomaker.bundles.safe_extract import (
    ExtractionLimits,
    remove_tree,
    safe_extract_archive,
    safe_relative_name,
)
from openrobomaker.bundles.sourcing import SOURCE_SCRIPT, source_command_prefix, sourced_argv

__all__ = [
    "SOURCE_SCRIPT",
    "BundleError",
    "BundleErrorCategory",
    "BundleOverlay",
    "ExtractedBundle",
    "ExtractionLimits",
    "extract_bundle",
    "find_setup_script",
    "remove_tree",
    "safe_extract_archive",
    "safe_relative_name",
    "source_command_prefix",
    "sourced_argv",
]
