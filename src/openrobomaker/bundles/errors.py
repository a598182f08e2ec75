"""Why a bundle could not be used, in categories callers map to API failure codes."""

from __future__ import annotations

from enum import StrEnum


class BundleErrorCategory(StrEnum):
    FORMAT = "FORMAT"  # not a bundle we understand (bad gzip/tar, missing version, bad metadata)
    EXTRACTION = "EXTRACTION"  # the archive is fine but writing it out failed (disk full, truncated data)
    UNSAFE = "UNSAFE"  # a member would escape the destination or is a device / fifo
    TOO_LARGE = "TOO_LARGE"  # more members or more bytes than the configured limits


class BundleError(Exception):
    """A bundle that cannot be extracted; `category` says why, the message says it for a human."""

    def __init__(self, category: BundleErrorCategory, message: str):
        super().__init__(message)
        self.category = BundleErrorCategory(category)
        self.message = message

    def __str__(self) -> str:
        return f"{self.category.value}: {self.message}"
