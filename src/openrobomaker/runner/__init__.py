"""The simulation runner: everything for one simulation job run on one node.

`python -m openrobomaker.runner --spec SPEC.json` runs one run described by a `RunnerSpec` and reports to
the control plane over HTTP until the run is finished.
"""

from openrobomaker.runner.spec import RunnerSpec, SpecError

__all__ = ["RunnerSpec", "SpecError"]
