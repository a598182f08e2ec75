"""All 57 operations of botocore's robomaker model are routed and validate their input server-side.

For every operation a small generator builds a valid minimal input from the model's shapes (required
members with values that satisfy min/max/pattern/enum, well-formed RoboMaker ARNs). It is sent with
boto3's real client: the answer must be a success or one of the operation's modeled errors (never a 404,
never a 500, never a validation error about our valid input). Then, for each constraint that only the
server checks (max, pattern, enum, value ranges, list/map sizes), the same request with that one
constraint violated must answer InvalidParameterException naming the field path, AWS style
(`sources.1.member.s3Bucket`). Client-side validation is off so that botocore lets the bad value through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import botocore.session
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from botocore.model import OperationModel, Shape

from helpers import running_server

MODEL = botocore.session.get_session().get_service_model("robomaker")
ACCOUNT = "000000000000"
REGION = "us-east-1"
NOT_AVAILABLE = "not available"
VALIDATION_WORDING = "failed to satisfy constraint"

_ARN_PATHS = {
    "robot-application": "robot-application/generated-app/1551203427717",
    "simulation-application": "simulation-application/generated-sim/1551203427605",
    "simulation-job": "simulation-job/sim-0123456789ab",
    "simulation-job-batch": "simulation-job-batch/batch-0123456789ab",
    "deployment-fleet": "deployment-fleet/generated-fleet/1539894765711",
    "robot": "robot/generated-robot/1550772324398",
    "deployment-job": "deployment-job/deployment-0123456789ab",
    "world": "world/generation-0123456789ab/world-0123456789ab",
    "world-export-job": "world-export-job/export-0123456789ab",
    "world-generation-job": "world-generation-job/generation-0123456789ab",
    "world-template": "world-template/template-0123456789ab",
}
IAM_ROLE = f"arn:aws:iam::{ACCOUNT}:role/generated-role"
TRIVIAL_PATTERNS = {".*", ".+", "[\\S\\s]+", "[\\s\\S]+"}
STRING_CANDIDATES = [
    "generated-value",
    "1",
    "9",
    "1.x",
    "ALL",
    "$LATEST",
    "A",
    "generated.bucket",
    "a",
    "sha256:" + "0" * 64,
    IAM_ROLE,
]
BAD_PATTERN_CANDIDATES = ["#bad value!", "!", "~~", "\u00e9\u00e9\u00e9"]


def arn(resource_type: str) -> str:
    return f"arn:aws:robomaker:{REGION}:{ACCOUNT}:{_ARN_PATHS[resource_type]}"


def resource_type_for(operation: str, path: tuple[str, ...]) -> str:
    """The resource an ARN-valued member names, from the operation and the member's path."""
    member = path[-1] if path else ""
    context = " ".join(path).lower()
    if member == "application" or member == "applications":
        if "simulationapplications" in context or "SimulationApplication" in operation:
            return "simulation-application"
        return "robot-application"
    if member in ("job", "jobs"):
        return "deployment-job" if "Deployment" in operation else "simulation-job"
    if member in ("generationJob",):
        return "world-generation-job"
    if member in ("worlds", "world"):
        return "world"
    table = {
        "batch": "simulation-job-batch",
        "fleet": "deployment-fleet",
        "robot": "robot",
        "template": "world-template",
    }
    return table.get(member, "robot-application")


def _fits(value: str, shape: Shape) -> bool:
    meta = shape.metadata
    if len(value) < meta.get("min", 0) or len(value) > meta.get("max", 10**9):
        return False
    pattern = meta.get("pattern")
    return pattern is None or re.fullmatch(pattern, value) is not None


def valid_string(shape: Shape, operation: str, path: tuple[str, ...]) -> str:
    if shape.enum:
        return shape.enum[0]
    pattern = shape.metadata.get("pattern", "")
    candidates = list(STRING_CANDIDATES)
    if pattern.startswith("arn:aws:iam"):
        candidates.insert(0, IAM_ROLE)
    elif pattern.startswith("arn:") or shape.name == "Arn":
        candidates.insert(0, arn(resource_type_for(operation, path)))
    for candidate in candidates:
        if _fits(candidate, shape):
            return candidate
    raise AssertionError(f"no valid string for {shape.name} at {'.'.join(path)} (pattern {pattern!r})")


def valid_value(shape: Shape, operation: str, path: tuple[str, ...] = ()) -> Any:
    """The smallest value of `shape` that satisfies all its constraints (required members only)."""
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        return {
            name: valid_value(shape.members[name], operation, (*path, name))
            for name in shape.required_members
        }
    if kind == "list":
        count = max(meta.get("min", 0), 1)
        return [valid_value(shape.member, operation, path) for _ in range(count)]
    if kind == "map":
        count = max(meta.get("min", 0), 1)
        key = valid_string(shape.key, operation, path)
        return {f"{key}{i}" if i else key: valid_string(shape.value, operation, path) for i in range(count)}
    if kind == "string":
        return valid_string(shape, operation, path)
    if kind in ("integer", "long"):
        value = meta.get("min", 1)
        return min(value, meta["max"]) if "max" in meta else value
    if kind in ("float", "double"):
        return float(meta.get("min", 1))
    if kind == "boolean":
        return True
    raise AssertionError(f"no generator for {kind} ({shape.name})")


# --- violations ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    kind: str  # enum | max-length | pattern | max-value | min-value | max-items
    path: tuple[Any, ...]  # member names and, for list items, the int 0
    bad: Any

    @property
    def field(self) -> str:
        """The path the way AWS names it in validation messages: list items as `<list>.1.member`."""
        parts: list[str] = []
        for step in self.path:
            parts.append("1.member" if step == 0 else step)
        return ".".join(parts)

    @property
    def id(self) -> str:
        return f"{self.field}:{self.kind}"


def _longer(shape: Shape, operation: str, path: tuple[str, ...]) -> str:
    limit = shape.metadata["max"] + 1
    base = valid_string(shape, operation, path)
    for fill in ("a", "1", "0", "x"):
        candidate = (base + fill * limit)[:limit]
        pattern = shape.metadata.get("pattern")
        if pattern is None or re.fullmatch(pattern, candidate):
            return candidate
    return "a" * limit


def _not_matching(shape: Shape) -> str | None:
    pattern = shape.metadata.get("pattern")
    if pattern is None or pattern in TRIVIAL_PATTERNS or shape.enum:
        return None
    low, high = shape.metadata.get("min", 0), shape.metadata.get("max", 10**9)
    for candidate in BAD_PATTERN_CANDIDATES:
        candidate = candidate * max(1, -(-low // len(candidate)))
        if low <= len(candidate) <= high and re.fullmatch(pattern, candidate) is None:
            return candidate
    return None


def violations(shape: Shape, operation: str, path: tuple[Any, ...] = (), seen: frozenset = frozenset()):
    """Every server-side-only constraint reachable from `shape`, each with a value that breaks just it."""
    names = tuple(p for p in path if isinstance(p, str))
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if shape.name in seen:
            return
        for name, member in shape.members.items():
            yield from violations(member, operation, (*path, name), seen | {shape.name})
    elif kind == "list":
        if "max" in meta:
            item = valid_value(shape.member, operation, names)
            yield Violation("max-items", path, [item] * (meta["max"] + 1))
        yield from violations(shape.member, operation, (*path, 0), seen)
    elif kind == "map":
        if "max" in meta:
            key = valid_string(shape.key, operation, names)
            value = valid_string(shape.value, operation, names)
            yield Violation("max-items", path, {f"{key}{i}": value for i in range(meta["max"] + 1)})
    elif kind == "string":
        if shape.enum:
            yield Violation("enum", path, "NotAValueOfTheEnum")
        if "max" in meta:
            yield Violation("max-length", path, _longer(shape, operation, names))
        bad = _not_matching(shape)
        if bad is not None:
            yield Violation("pattern", path, bad)
    elif kind in ("integer", "long"):
        if "max" in meta:
            yield Violation("max-value", path, meta["max"] + 1)
        if "min" in meta:
            yield Violation("min-value", path, meta["min"] - 1)


def with_violation(shape: Shape, operation: str, violation: Violation, depth: int = 0) -> Any:
    """The minimal valid input with the members on the violation's path present and its leaf broken."""
    if depth == len(violation.path):
        return violation.bad
    step = violation.path[depth]
    names = tuple(p for p in violation.path[:depth] if isinstance(p, str))
    if shape.type_name == "structure":
        value = valid_value(shape, operation, names)
        value[step] = with_violation(shape.members[step], operation, violation, depth + 1)
        return value
    if shape.type_name == "list":
        return [with_violation(shape.member, operation, violation, depth + 1)]
    raise AssertionError(f"cannot descend into {shape.type_name} at {violation.path[:depth]}")


# --- the cases ----------------------------------------------------------------------------------------


def operation_model(name: str) -> OperationModel:
    return MODEL.operation_model(name)


def valid_input(name: str) -> dict[str, Any]:
    shape = operation_model(name).input_shape
    return valid_value(shape, name) if shape is not None else {}


VIOLATION_CASES = [
    pytest.param(name, violation, id=f"{name}-{violation.id}")
    for name in MODEL.operation_names
    if operation_model(name).input_shape is not None
    for violation in violations(operation_model(name).input_shape, name)
]


@pytest.fixture(scope="module")
def raw_client():
    """boto3's robomaker client, client-side parameter validation off, on a server of this module's own.

    Generated requests may create fleets, robots, templates...; they stay out of the shared server.
    """
    with running_server() as server:
        yield server.client(parameter_validation=False)


def call(client, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    return getattr(client, xform_name(operation))(**params)


def test_the_model_has_57_operations():
    assert len(MODEL.operation_names) == 57
    assert MODEL.metadata["protocol"] == "rest-json"
    assert MODEL.api_version == "2018-06-29"


def test_every_operation_has_server_side_constraints_to_check():
    # Every operation's input carries at least one constraint that only the server checks.
    covered = {case.values[0] for case in VIOLATION_CASES}
    assert covered == set(MODEL.operation_names)
    assert len(VIOLATION_CASES) > 400


@pytest.mark.parametrize("operation", MODEL.operation_names)
def test_valid_minimal_input_is_routed(raw_client, operation):
    params = valid_input(operation)
    modeled = {shape.name for shape in operation_model(operation).error_shapes}
    try:
        response = call(raw_client, operation, params)
    except ClientError as exc:
        status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        code = exc.response["Error"]["Code"]
        message = exc.response["Error"].get("Message", "")
        assert status not in (404, 500), f"{operation} answered {status} {code}: {message}"
        assert code != "InternalServerException", message
        assert code in modeled, (
            f"{operation} answered {code!r}, not one of its modeled errors {sorted(modeled)}: {message}"
        )
        assert status == 400, (status, code)
        assert VALIDATION_WORDING not in message, f"the valid input {params} was rejected: {message}"
    else:
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert response["ResponseMetadata"]["RequestId"]


@pytest.mark.parametrize(("operation", "violation"), VIOLATION_CASES)
def test_one_violated_constraint_is_an_invalid_parameter(raw_client, operation, violation):
    params = with_violation(operation_model(operation).input_shape, operation, violation)
    with pytest.raises(ClientError) as exc:
        call(raw_client, operation, params)
    error = exc.value.response["Error"]
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "InvalidParameterException", error
    assert violation.field in error["Message"], (
        f"message does not name {violation.field!r}: {error['Message']}"
    )
    assert NOT_AVAILABLE not in error["Message"], "validation must come before 'not available'"
