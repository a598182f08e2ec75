"""Property-based fuzzing of operation inputs generated from the model's shapes (hypothesis).

Inputs are drawn from botocore's robomaker shapes, valid and invalid: wrong JSON types, strings too long,
not matching their pattern, values outside enums and ranges, lists and maps too big, required members
missing, at every nesting level. They go through boto3's client with client-side validation off; when
botocore itself cannot serialize a wrong type (a list where a structure belongs), the same JSON is sent as
a raw request signed by botocore's SigV4Auth. Properties: never a 5xx, every error is one the operation
models, and a rejected request changes nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import quote

import botocore.session
import httpx
import pytest
from botocore import xform_name
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.model import Shape
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from helpers import running_server
from openrobomaker.objectstore import ObjectStoreConfig, open_store

MODEL = botocore.session.get_session().get_service_model("robomaker")
BUCKET = "fuzz-bundles"
REAL_SOURCE = {"s3Bucket": BUCKET, "s3Key": "robot.tar.gz", "architecture": "X86_64"}
TRIVIAL_PATTERNS = {".*", ".+", "[\\S\\s]+", "[\\s\\S]+"}
TEXT_CAP = 40  # longest generated "valid" free text
FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
pytestmark = pytest.mark.xdist_group("fuzz")


# --- strategies from shapes ---------------------------------------------------------------------------


class ShapeStrategies:
    """Valid and invalid values for shapes; `hints` adds known-good values by member name (real ARNs...)."""

    def __init__(self, hints: dict[str, list[Any]]):
        self.hints = hints
        self._inputs: dict[str, st.SearchStrategy] = {}

    def value(
        self, shape: Shape, member: str = "", depth: int = 0, textual: bool = False
    ) -> st.SearchStrategy:
        valid = self.valid(shape, member, depth, textual)
        invalid = self.invalid(shape, member, depth, textual)
        # Mostly valid, so that requests get deep enough to reach the checks behind the first one.
        return st.one_of(valid, valid, valid, invalid)

    def valid(
        self, shape: Shape, member: str = "", depth: int = 0, textual: bool = False
    ) -> st.SearchStrategy:
        generated = self._valid(shape, depth, textual)
        if self.hints.get(member):
            return st.one_of(st.sampled_from(self.hints[member]), generated)
        return generated

    def _valid(self, shape: Shape, depth: int, textual: bool) -> st.SearchStrategy:
        meta, kind = shape.metadata, shape.type_name
        low, high = meta.get("min"), meta.get("max")
        if kind == "string":
            if shape.enum:
                return st.sampled_from(shape.enum)
            size = (low or 0, min(high if high is not None else TEXT_CAP, TEXT_CAP))
            pattern = meta.get("pattern")
            if pattern is None or pattern in TRIVIAL_PATTERNS:
                return st.text(min_size=max(size[0], 1 if textual else 0), max_size=max(size))
            return st.from_regex(pattern, fullmatch=True).filter(lambda s: size[0] <= len(s) <= max(size))
        if kind in ("integer", "long"):
            return st.integers(
                min_value=low if low is not None else -1000, max_value=high if high is not None else 10**6
            )
        if kind in ("float", "double"):
            return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
        if kind == "boolean":
            return st.booleans()
        if kind == "list":
            items = (
                self.value(shape.member, "", depth + 1, textual)
                if depth < 6
                else self.valid(shape.member, "", depth + 1)
            )
            return st.lists(items, min_size=low or 0, max_size=min(high if high is not None else 3, 3))
        if kind == "map":
            return st.dictionaries(
                self.valid(shape.key, "", depth + 1),
                self.value(shape.value, "", depth + 1)
                if depth < 6
                else self.valid(shape.value, "", depth + 1),
                min_size=low or 0,
                max_size=min(high if high is not None else 3, 3),
            )
        if kind == "structure":
            location = lambda m: m.serialization.get("location") in ("uri", "querystring")  # noqa: E731
            members = {
                name: self.value(m, name, depth + 1, textual or location(m))
                for name, m in shape.members.items()
            }
            required = {name: members[name] for name in shape.required_members}
            optional = {name: s for name, s in members.items() if name not in required}
            return st.fixed_dictionaries(required, optional=optional)
        raise AssertionError(f"no strategy for {kind}")

    def invalid(
        self, shape: Shape, member: str = "", depth: int = 0, textual: bool = False
    ) -> st.SearchStrategy:
        """Values that break one rule of `shape`; URI and query members stay strings, as HTTP carries them."""
        meta, kind = shape.metadata, shape.type_name
        low, high = meta.get("min"), meta.get("max")
        options: list[st.SearchStrategy] = []
        wrong_types = [
            st.integers(min_value=-(2**40), max_value=2**40),
            st.booleans(),
            st.none(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
            st.text(max_size=5),
            st.floats(allow_nan=False, allow_infinity=False),
        ]
        if kind == "string":
            if not textual:
                options += wrong_types[:5]
            if high is not None and high < 5000:
                options.append(st.text(alphabet="abc", min_size=high + 1, max_size=high + 3))
            elif high is not None:
                options.append(st.just("a" * (high + 1)))
            if low and not textual:
                # An empty URI label makes a path no operation has (botocore never sends one: min 1).
                options.append(st.just(""))
            if shape.enum:
                options.append(st.text(max_size=10).filter(lambda s: s not in shape.enum))
            pattern = meta.get("pattern")
            if pattern and pattern not in TRIVIAL_PATTERNS:
                options.append(
                    st.text(min_size=1, max_size=10).filter(lambda s: re.fullmatch(pattern, s) is None)
                )
            if textual and not options:
                options.append(st.text(min_size=1, max_size=5))
        elif kind in ("integer", "long"):
            options += [wrong_types[i] for i in (1, 3, 5, 6)]
            if high is not None:
                options.append(st.integers(min_value=high + 1, max_value=high + 10**6))
            if low is not None:
                options.append(st.integers(min_value=low - 10**6, max_value=low - 1))
            if kind == "integer":
                options.append(st.integers(min_value=2**31, max_value=2**62))
        elif kind == "boolean":
            options += [wrong_types[i] for i in (0, 5, 3)]
        elif kind == "list":
            if textual:
                options.append(st.lists(st.text(min_size=200, max_size=300), min_size=1, max_size=2))
            else:
                options += [wrong_types[i] for i in (0, 4, 5)]
                options.append(st.lists(wrong_types[0], min_size=1, max_size=2))
            if high is not None and high <= 200:
                options.append(
                    st.lists(
                        self._valid(shape.member, depth + 1, textual), min_size=high + 1, max_size=high + 1
                    )
                )
            if low:
                options.append(st.just([]))
        elif kind == "map":
            options += [wrong_types[i] for i in (0, 3, 5)]
            options.append(
                st.dictionaries(st.text(min_size=1, max_size=4), st.integers(), min_size=1, max_size=2)
            )
            if high is not None and high <= 200:
                options.append(
                    st.dictionaries(
                        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                        st.just("v"),
                        min_size=high + 1,
                        max_size=high + 1,
                    )
                )
        elif kind == "structure":
            options += [wrong_types[i] for i in (0, 3, 5)]
            if shape.required_members:
                # Everything but one required member.
                options.append(
                    self._valid(shape, depth + 1, textual).flatmap(
                        lambda value: st.sampled_from(shape.required_members).map(
                            lambda drop: {k: v for k, v in value.items() if k != drop}
                        )
                    )
                )
            options.append(st.fixed_dictionaries({"notAMember": st.text(max_size=5)}))
        return st.one_of(options) if options else st.nothing()

    def operation_input(self, operation: str) -> st.SearchStrategy:
        if operation not in self._inputs:
            self._inputs[operation] = self._valid(MODEL.operation_model(operation).input_shape, 0, False)
        return self._inputs[operation]


# --- sending ------------------------------------------------------------------------------------------


class Sender:
    """Sends an input through boto3 (validation off); falls back to a raw signed request when botocore
    cannot serialize the wrong types it was given. Returns (HTTP status, error code or None)."""

    def __init__(self, server):
        self.server = server
        self.client = server.client(parameter_validation=False)

    def send(self, operation: str, params: dict[str, Any]) -> tuple[int, str | None, str]:
        try:
            response = getattr(self.client, xform_name(operation))(**params)
        except ClientError as exc:
            error = exc.response["Error"]
            return (
                exc.response["ResponseMetadata"]["HTTPStatusCode"],
                error.get("Code"),
                error.get("Message", ""),
            )
        except (AttributeError, TypeError, ValueError, KeyError):
            return self.send_raw(operation, params)
        return response["ResponseMetadata"]["HTTPStatusCode"], None, ""

    def send_raw(self, operation: str, params: dict[str, Any]) -> tuple[int, str | None, str]:
        """The rest-json request botocore would have made, built by hand: labels, query, JSON body."""
        model = MODEL.operation_model(operation)
        path, query, body = model.http["requestUri"], [], {}
        for name, value in params.items():
            member = model.input_shape.members.get(name)
            location = member.serialization.get("location") if member is not None else None
            wire_name = member.serialization.get("name", name) if member is not None else name
            if location == "uri":
                path = path.replace("{" + wire_name + "}", quote(str(value), safe=""))
            elif location == "querystring":
                values = value if isinstance(value, list) else [value]
                query += [f"{quote(wire_name, safe='')}={quote(str(v), safe='')}" for v in values]
            else:
                body[name] = value
        method = model.http["method"]
        content = json.dumps(body).encode() if method != "GET" else b""
        url = self.server.endpoint + path + ("?" + "&".join(query) if query else "")
        request = AWSRequest(
            method=method, url=url, data=content, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(Credentials("test", "test"), "robomaker", "us-east-1").add_auth(request)
        response = httpx.request(
            method, url, headers=dict(request.prepare().headers.items()), content=content, timeout=30
        )
        if response.status_code == 200:
            return 200, None, ""
        payload = response.json()
        return response.status_code, payload.get("__type"), payload.get("message", "")


def assert_modeled(operation: str, status: int, code: str | None, message: str) -> None:
    assert status < 500, f"{operation}: HTTP {status} {code}: {message}"
    if code is None:
        assert status == 200
        return
    modeled = {shape.name for shape in MODEL.operation_model(operation).error_shapes}
    assert code in modeled, f"{operation}: {code} is not a modeled error ({sorted(modeled)}): {message}"
    assert code != "InternalServerException", message
    assert status == 400, (status, code, message)


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server():
    """A server of its own: fuzzed creates must not show up in other tests' lists."""
    with running_server() as server:
        store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
        store.create_bucket(BUCKET)
        store.put_bytes(BUCKET, "robot.tar.gz", b"fuzz bundle")
        yield server


@pytest.fixture(scope="module")
def world(fuzz_server):
    """Real resources for the generated requests to hit, and the hints that point at them."""
    rm = fuzz_server.client()
    robot = rm.create_robot_application(
        name="fuzz-robot", sources=[REAL_SOURCE], robotSoftwareSuite={"name": "ROS", "version": "Melodic"}
    )
    simulation = rm.create_simulation_application(
        name="fuzz-simulation",
        sources=[REAL_SOURCE],
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
    )
    rm.tag_resource(resourceArn=robot["arn"], tags={"keep": "me"})
    ghost = "arn:aws:robomaker:us-east-1:000000000000:robot-application/ghost/1551203427717"
    suites = [{"name": "ROS", "version": "Melodic"}, {"name": "ROS2", "version": "Foxy"}, {"name": "General"}]
    hints = {
        "application": [robot["arn"], simulation["arn"], ghost],
        "resourceArn": [robot["arn"], simulation["arn"], ghost],
        "name": ["fuzz-robot", "fuzz-simulation", "fresh"],
        "sources": [[REAL_SOURCE]],
        "robotSoftwareSuite": suites,
        "simulationSoftwareSuite": [{"name": "Gazebo", "version": "9"}, {"name": "SimulationRuntime"}],
        "iamRole": ["arn:aws:iam::000000000000:role/fuzz"],
    }
    return {"robot": robot, "simulation": simulation, "strategies": ShapeStrategies(hints), "rm": rm}


@pytest.fixture(scope="module")
def sender(fuzz_server):
    return Sender(fuzz_server)


def all_applications(rm, kind: str) -> list[tuple[str, str, str]]:
    paginator = rm.get_paginator(f"list_{kind}_applications")
    key = f"{kind}ApplicationSummaries"
    pages = paginator.paginate(versionQualifier="ALL")
    return sorted((s["arn"], s["version"], str(s["lastUpdatedAt"])) for page in pages for s in page[key])


def unique_name(params: dict[str, Any]) -> dict[str, Any]:
    # A valid generated name is made unique so that accepted creates do not collide by accident.
    name = params.get("name")
    if isinstance(name, str) and name == "fresh":
        params = {**params, "name": f"fresh-{uuid.uuid4().hex[:8]}"}
    return params


# --- properties ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "kind"),
    [("CreateRobotApplication", "robot"), ("CreateSimulationApplication", "simulation")],
)
@FUZZ_SETTINGS
@given(data=st.data())
def test_create_application_never_fails_badly_nor_leaves_traces(world, sender, operation, kind, data):
    rm = world["rm"]
    params = unique_name(data.draw(world["strategies"].operation_input(operation), label="input"))
    before = all_applications(rm, kind)
    status, code, message = sender.send(operation, params)
    assert_modeled(operation, status, code, message)
    after = all_applications(rm, kind)
    if code is not None:
        assert after == before, f"a rejected {operation} changed the application list"
    else:
        created = set(after) - set(before)
        assert len(created) == 1, created
        getattr(rm, f"delete_{kind}_application")(application=created.pop()[0])


@FUZZ_SETTINGS
@given(data=st.data())
def test_update_robot_application_never_fails_badly_nor_changes_on_rejection(world, sender, data):
    rm, arn = world["rm"], world["robot"]["arn"]
    params = data.draw(world["strategies"].operation_input("UpdateRobotApplication"), label="input")
    before = rm.describe_robot_application(application=arn)
    status, code, message = sender.send("UpdateRobotApplication", params)
    assert_modeled("UpdateRobotApplication", status, code, message)
    after = rm.describe_robot_application(application=arn)
    if code is not None or params.get("application") != arn:
        assert after["revisionId"] == before["revisionId"]
        assert after.get("sources") == before.get("sources")
        assert after["robotSoftwareSuite"] == before["robotSoftwareSuite"]
    else:
        assert after["revisionId"] != before["revisionId"]


@FUZZ_SETTINGS
@given(data=st.data())
def test_tag_resource_never_fails_badly_nor_changes_on_rejection(world, sender, data):
    rm, arn = world["rm"], world["robot"]["arn"]
    params = data.draw(world["strategies"].operation_input("TagResource"), label="input")
    before = rm.list_tags_for_resource(resourceArn=arn)["tags"]
    status, code, message = sender.send("TagResource", params)
    assert_modeled("TagResource", status, code, message)
    after = rm.list_tags_for_resource(resourceArn=arn)["tags"]
    if code is not None or params.get("resourceArn") != arn:
        assert after == before
    else:
        assert after == {**before, **params["tags"]}
        extra = [key for key in after if key != "keep"]
        if extra:
            rm.untag_resource(resourceArn=arn, tagKeys=extra)


@pytest.mark.parametrize(
    "operation",
    [
        "ListRobotApplications",
        "DescribeRobotApplication",
        "CreateRobotApplicationVersion",
        "UntagResource",
        "ListTagsForResource",
        "CreateSimulationJob",
        "DescribeSimulationApplication",
    ],
)
@FUZZ_SETTINGS
@given(data=st.data())
def test_operation_never_fails_badly(world, sender, operation, data):
    params = data.draw(world["strategies"].operation_input(operation), label="input")
    status, code, message = sender.send(operation, params)
    assert_modeled(operation, status, code, message)
