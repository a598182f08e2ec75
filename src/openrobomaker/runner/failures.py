"""How a run ends badly: a `SimulationJobErrorCode` plus a reason a human can act on."""

from __future__ import annotations

from openrobomaker.runner.spec import ApplicationSpec

MAX_REASON_CHARS = 1024

INTERNAL_SERVICE_ERROR = "InternalServiceError"
BAD_PERMISSIONS_S3_OBJECT = "BadPermissionsS3Object"
BAD_PERMISSIONS_S3_OUTPUT = "BadPermissionsS3Output"
INVALID_S3_RESOURCE = "InvalidS3Resource"
MISMATCHED_ETAG = "MismatchedEtag"


class JobFailure(Exception):
    """Ends the run as Failed with this code and reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = truncate_reason(reason)


class CancelRequested(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised out of long steps when the job was cancelled meanwhile."""


def truncate_reason(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def _app_word(app: ApplicationSpec) -> str:
    return "SimulationApplication" if app.is_simulation else "RobotApplication"


def crash_code(app: ApplicationSpec) -> str:
    return f"{_app_word(app)}Crash"


def bundle_unreadable_code(app: ApplicationSpec) -> str:
    return f"BadPermissions{_app_word(app)}"


def invalid_bundle_code(app: ApplicationSpec) -> str:
    return f"InvalidBundle{_app_word(app)}"


def etag_mismatch_code(app: ApplicationSpec) -> str:
    # A numbered version pinned the bundle's ETag at CreateXxxApplicationVersion time.
    return f"{_app_word(app)}VersionMismatchedEtag" if app.is_numbered_version else MISMATCHED_ETAG


def app_label(app: ApplicationSpec) -> str:
    kind = "simulation" if app.is_simulation else "robot"
    return f"{kind} application {app.name!r}"
