"""Robot and simulation applications through boto3's real robomaker client (spec §1).

Each test names its applications uniquely, so they can share the session's server with the other tests.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from helpers import running_server
from openrobomaker.objectstore import ObjectStoreConfig, open_store
from openrobomaker.store import applications as app_store
from openrobomaker.store import tags as tag_store
from openrobomaker.store.db import Database, FastResult, sqlite_url

BUNDLE_BUCKET = "bundles"
ACCOUNT = "000000000000"
REGION = "us-east-1"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Kind:
    """What differs between robot and simulation applications, seen from a client."""

    id: str
    snake: str  # robot_application
    arn_type: str
    summaries_key: str
    suites: dict[str, Any] = field(default_factory=dict)  # the software-suite arguments of create/update

    def call(self, rm, verb: str, **kwargs):
        if verb == "list":
            method = f"list_{self.snake}s"
        elif verb == "create_version":
            method = f"create_{self.snake}_version"
        else:
            method = f"{verb}_{self.snake}"
        return getattr(rm, method)(**kwargs)

    def create(self, rm, name: str, sources: list[dict] | None = None, **kwargs):
        args = {**self.suites, **kwargs}
        if sources is not None:
            args["sources"] = sources
        return self.call(rm, "create", name=name, **args)

    def update(self, rm, arn: str, sources: list[dict] | None = None, **kwargs):
        args = {**self.suites, **kwargs}
        if sources is not None:
            args["sources"] = sources
        return self.call(rm, "update", application=arn, **args)


ROBOT = Kind(
    "robot",
    "robot_application",
    "robot-application",
    "robotApplicationSummaries",
    {"robotSoftwareSuite": {"name": "ROS", "version": "Melodic"}},
)
SIMULATION = Kind(
    "simulation",
    "simulation_application",
    "simulation-application",
    "simulationApplicationSummaries",
    {
        "robotSoftwareSuite": {"name": "ROS", "version": "Melodic"},
        "simulationSoftwareSuite": {"name": "Gazebo", "version": "9"},
        "renderingEngine": {"name": "OGRE", "version": "1.x"},
    },
)
KINDS = [pytest.param(ROBOT, id="robot"), pytest.param(SIMULATION, id="simulation")]


def unique(prefix: str = "app") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def error_code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def error_message(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Message"]


class Bundles:
    """Puts bundle objects into a server's local object store, as `openrobomaker s3 cp` would."""

    def __init__(self, data_dir):
        self.store = open_store(ObjectStoreConfig(kind="local", root=str(data_dir / "objects")))
        self.store.create_bucket(BUNDLE_BUCKET)

    def put(self, data: bytes | None = None, key: str | None = None) -> tuple[dict[str, str], str]:
        """A fresh object; returns the X86_64 source naming it and the object's MD5 ETag."""
        data = uuid.uuid4().bytes * 64 if data is None else data
        key = key or f"{unique('robot')}/bundle.tar.gz"
        info = self.store.put_bytes(BUNDLE_BUCKET, key, data)
        assert info.etag == hashlib.md5(data).hexdigest()
        return {"s3Bucket": BUNDLE_BUCKET, "s3Key": key, "architecture": "X86_64"}, info.etag


@pytest.fixture
def bundles(server) -> Bundles:
    return Bundles(server.data_dir)


@pytest.fixture
def app(rm, bundles):
    """A factory: create an application of a kind with a fresh bundle; returns (response, source, etag)."""

    def make(kind: Kind, **kwargs):
        source, etag = bundles.put()
        response = kind.create(rm, unique(kind.id), [source], **kwargs)
        return response, source, etag

    return make


def names_listed(rm, kind: Kind, name: str, **kwargs) -> list[tuple[str, str]]:
    filters = [{"name": "name", "values": [name]}]
    response = kind.call(rm, "list", filters=filters, **kwargs)
    return [(s["name"], s["version"]) for s in response[kind.summaries_key]]


# --- create -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_create_returns_the_application(rm, bundles, kind):
    source, _etag = bundles.put()
    name = unique(kind.id)
    before = time.time()
    created = kind.create(rm, name, [source])
    after = time.time()

    match = re.fullmatch(
        rf"arn:aws:robomaker:{REGION}:{ACCOUNT}:{kind.arn_type}/{name}/(\d{{13}})", created["arn"]
    )
    assert match, created["arn"]
    created_ms = int(match.group(1))
    assert before * 1000 - 2000 <= created_ms <= after * 1000 + 2000
    assert created["name"] == name
    assert created["version"] == "$LATEST"
    assert UUID_RE.match(created["revisionId"])
    assert created["tags"] == {}
    assert created["robotSoftwareSuite"] == {"name": "ROS", "version": "Melodic"}
    # $LATEST resolves its bundle at use time: RoboMaker showed no etag there (spec §1.1).
    assert created["sources"] == [source]
    assert abs(created["lastUpdatedAt"].timestamp() - time.time()) < 30
    assert created["lastUpdatedAt"].tzinfo is not None
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 200

    described = kind.call(rm, "describe", application=created["arn"])
    for key in (
        "arn",
        "name",
        "version",
        "revisionId",
        "sources",
        "robotSoftwareSuite",
        "lastUpdatedAt",
        "tags",
    ):
        assert described[key] == created[key], key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("missing", ["key", "bucket"])
def test_create_with_missing_source_object_is_rejected(rm, bundles, kind, missing):
    source, _ = bundles.put()
    if missing == "key":
        source = {**source, "s3Key": "no/such/bundle.tar.gz"}
    else:
        source = {**source, "s3Bucket": "no-such-bucket-" + uuid.uuid4().hex[:8]}
    name = unique(kind.id)
    with pytest.raises(ClientError) as exc:
        kind.create(rm, name, [source])
    assert error_code(exc) == "InvalidParameterException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "sources" in error_message(exc)
    assert names_listed(rm, kind, name) == []


@pytest.mark.parametrize("kind", KINDS)
def test_create_without_sources_or_environment_is_rejected(rm, kind):
    name = unique(kind.id)
    with pytest.raises(ClientError) as exc:
        kind.create(rm, name)
    assert error_code(exc) == "InvalidParameterException"
    assert names_listed(rm, kind, name) == []


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_name_is_rejected(rm, app, bundles, kind):
    first, _, _ = app(kind)
    other_source, _ = bundles.put()
    with pytest.raises(rm.exceptions.ResourceAlreadyExistsException) as exc:
        kind.create(rm, first["name"], [other_source])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # The first application is untouched.
    described = kind.call(rm, "describe", application=first["arn"])
    assert described["revisionId"] == first["revisionId"]
    assert described["sources"] == first["sources"]
    assert names_listed(rm, kind, first["name"]) == [(first["name"], "$LATEST")]


def test_robot_and_simulation_application_may_share_a_name(rm, bundles):
    name = unique("shared")
    source, _ = bundles.put()
    robot = ROBOT.create(rm, name, [source])
    simulation = SIMULATION.create(rm, name, [source])
    assert robot["arn"] != simulation["arn"]
    assert ":robot-application/" in robot["arn"] and ":simulation-application/" in simulation["arn"]


# --- versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_describe_latest_and_numbered_versions(rm, app, kind):
    created, source, etag = app(kind)
    version = kind.call(rm, "create_version", application=created["arn"])
    assert version["version"] == "1"
    assert version["arn"] == created["arn"]
    assert version["sources"] == [{**source, "etag": etag}]

    latest = kind.call(rm, "describe", application=created["arn"])
    assert latest["version"] == "$LATEST"
    explicit_latest = kind.call(rm, "describe", application=created["arn"], applicationVersion="$LATEST")
    assert explicit_latest["revisionId"] == latest["revisionId"]

    numbered = kind.call(rm, "describe", application=created["arn"], applicationVersion="1")
    assert numbered["version"] == "1"
    assert numbered["revisionId"] == version["revisionId"]
    assert numbered["sources"] == [{**source, "etag": etag}]
    assert numbered["robotSoftwareSuite"] == created["robotSoftwareSuite"]
    if kind is SIMULATION:
        assert numbered["simulationSoftwareSuite"] == created["simulationSoftwareSuite"]
        assert numbered["renderingEngine"] == created["renderingEngine"]

    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        kind.call(rm, "describe", application=created["arn"], applicationVersion="7")


@pytest.mark.parametrize("kind", KINDS)
def test_version_numbers_are_never_reused(rm, app, kind):
    created, _, _ = app(kind)
    arn = created["arn"]

    def new_version() -> str:
        return kind.call(rm, "create_version", application=arn)["version"]

    assert [new_version(), new_version()] == ["1", "2"]
    kind.call(rm, "delete", application=arn, applicationVersion="2")
    assert new_version() == "3"
    kind.call(rm, "delete", application=arn, applicationVersion="1")
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        kind.call(rm, "describe", application=arn, applicationVersion="1")
    assert new_version() == "4"
    listed = names_listed(rm, kind, created["name"], versionQualifier="ALL")
    assert sorted(v for _, v in listed) == sorted(["$LATEST", "3", "4"])


def test_a_version_pins_the_etag_the_object_had(rm, bundles):
    source, first_etag = bundles.put(b"first bundle content")
    created = ROBOT.create(rm, unique("pin"), [source])
    one = ROBOT.call(rm, "create_version", application=created["arn"])
    assert one["sources"][0]["etag"] == hashlib.md5(b"first bundle content").hexdigest() == first_etag

    # The bundle is replaced in the store; $LATEST follows it, version 1 keeps what it pinned.
    _, second_etag = bundles.put(b"second bundle content", key=source["s3Key"])
    assert second_etag != first_etag
    two = ROBOT.call(rm, "create_version", application=created["arn"])
    assert two["sources"][0]["etag"] == second_etag
    described_one = ROBOT.call(rm, "describe", application=created["arn"], applicationVersion="1")
    assert described_one["sources"][0]["etag"] == first_etag


def test_create_version_fails_when_the_bundle_is_gone(rm, bundles):
    source, _ = bundles.put()
    created = ROBOT.create(rm, unique("gone"), [source])
    bundles.store.delete(BUNDLE_BUCKET, source["s3Key"])
    with pytest.raises(ClientError) as exc:
        ROBOT.call(rm, "create_version", application=created["arn"])
    assert error_code(exc) == "InvalidParameterException"
    assert names_listed(rm, ROBOT, created["name"], versionQualifier="ALL") == [(created["name"], "$LATEST")]


@pytest.mark.parametrize("kind", KINDS)
def test_s3_etags_must_match_the_current_objects(rm, app, kind):
    created, _, etag = app(kind)
    with pytest.raises(ClientError) as exc:
        kind.call(rm, "create_version", application=created["arn"], s3Etags=["0" * 32])
    assert error_code(exc) == "InvalidParameterException"
    assert "s3Etags" in error_message(exc)
    assert names_listed(rm, kind, created["name"], versionQualifier="ALL") == [(created["name"], "$LATEST")]

    version = kind.call(rm, "create_version", application=created["arn"], s3Etags=[etag])
    assert version["version"] == "1"
    assert version["sources"][0]["etag"] == etag


@pytest.mark.parametrize("kind", KINDS)
def test_current_revision_id_guards_create_version(rm, app, bundles, kind):
    created, _, _ = app(kind)
    stale = created["revisionId"]
    new_source, _ = bundles.put()
    updated = kind.update(rm, created["arn"], [new_source])
    assert updated["revisionId"] != stale

    with pytest.raises(ClientError) as exc:
        kind.call(rm, "create_version", application=created["arn"], currentRevisionId=stale)
    assert error_code(exc) == "InvalidParameterException"
    assert "currentRevisionId" in error_message(exc)

    version = kind.call(
        rm, "create_version", application=created["arn"], currentRevisionId=updated["revisionId"]
    )
    assert version["version"] == "1"
    assert version["sources"][0]["s3Key"] == new_source["s3Key"]


@pytest.mark.parametrize("kind", KINDS)
def test_current_revision_id_guards_update(rm, app, bundles, kind):
    created, original_source, _ = app(kind)
    first_source, _ = bundles.put()
    first = kind.update(rm, created["arn"], [first_source], currentRevisionId=created["revisionId"])

    second_source, _ = bundles.put()
    with pytest.raises(ClientError) as exc:
        kind.update(rm, created["arn"], [second_source], currentRevisionId=created["revisionId"])
    assert error_code(exc) == "InvalidParameterException"
    assert "currentRevisionId" in error_message(exc)
    described = kind.call(rm, "describe", application=created["arn"])
    assert described["revisionId"] == first["revisionId"]
    assert described["sources"] == [first_source] != [original_source]


# --- update -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_update_changes_latest_revision_and_time(rm, app, bundles, kind):
    created, _, _ = app(kind)
    version = kind.call(rm, "create_version", application=created["arn"])
    time.sleep(0.05)
    new_source, _ = bundles.put()
    updated = kind.update(
        rm, created["arn"], [new_source], robotSoftwareSuite={"name": "ROS2", "version": "Foxy"}
    )
    assert updated["version"] == "$LATEST"
    assert updated["arn"] == created["arn"]
    assert updated["revisionId"] != created["revisionId"]
    assert UUID_RE.match(updated["revisionId"])
    assert updated["lastUpdatedAt"] > created["lastUpdatedAt"]
    assert updated["sources"] == [new_source]
    assert updated["robotSoftwareSuite"] == {"name": "ROS2", "version": "Foxy"}

    described = kind.call(rm, "describe", application=created["arn"])
    assert described["revisionId"] == updated["revisionId"]
    assert described["lastUpdatedAt"] == updated["lastUpdatedAt"]
    assert described["sources"] == [new_source]
    # A numbered version is a snapshot: the update does not touch it.
    one = kind.call(rm, "describe", application=created["arn"], applicationVersion="1")
    assert one["revisionId"] == version["revisionId"]
    assert one["robotSoftwareSuite"] == {"name": "ROS", "version": "Melodic"}

    again = kind.update(
        rm, created["arn"], [new_source], robotSoftwareSuite={"name": "ROS2", "version": "Foxy"}
    )
    assert again["revisionId"] != updated["revisionId"]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_application_is_not_found(rm, bundles, kind):
    arn = f"arn:aws:robomaker:{REGION}:{ACCOUNT}:{kind.arn_type}/{unique('ghost')}/1551203427717"
    with pytest.raises(rm.exceptions.ResourceNotFoundException) as exc:
        kind.call(rm, "describe", application=arn)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    source, _ = bundles.put()
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        kind.update(rm, arn, [source])


# --- list -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_list_latest_or_all_versions_with_name_filter(rm, app, kind):
    created, _, _ = app(kind)
    other, _, _ = app(kind)
    kind.call(rm, "create_version", application=created["arn"])
    kind.call(rm, "create_version", application=created["arn"])

    assert names_listed(rm, kind, created["name"]) == [(created["name"], "$LATEST")]
    all_versions = names_listed(rm, kind, created["name"], versionQualifier="ALL")
    assert sorted(all_versions) == sorted([(created["name"], v) for v in ("$LATEST", "1", "2")])

    summaries = kind.call(rm, "list")[kind.summaries_key]
    by_name = {s["name"]: s for s in summaries}
    assert {created["name"], other["name"]} <= set(by_name)
    assert all(s["version"] == "$LATEST" for s in summaries)
    summary = by_name[created["name"]]
    assert summary["arn"] == created["arn"]
    assert summary["robotSoftwareSuite"] == created["robotSoftwareSuite"]
    assert abs(summary["lastUpdatedAt"].timestamp() - created["lastUpdatedAt"].timestamp()) < 1
    if kind is SIMULATION:
        assert summary["simulationSoftwareSuite"] == created["simulationSoftwareSuite"]

    assert names_listed(rm, kind, unique("nobody")) == []


def test_list_pages_with_max_results_and_next_token(rm, app):
    created, _, _ = app(ROBOT)
    for _ in range(4):
        ROBOT.call(rm, "create_version", application=created["arn"])
    filters = [{"name": "name", "values": [created["name"]]}]
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"nextToken": token} if token else {}
        page = rm.list_robot_applications(versionQualifier="ALL", filters=filters, maxResults=2, **kwargs)
        pages += 1
        assert len(page["robotApplicationSummaries"]) <= 2
        seen += [s["version"] for s in page["robotApplicationSummaries"]]
        token = page.get("nextToken")
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(["$LATEST", "1", "2", "3", "4"])


def test_a_garbled_next_token_is_rejected(rm):
    with pytest.raises(ClientError) as exc:
        rm.list_robot_applications(nextToken="not-a-token-we-issued")
    assert error_code(exc) == "InvalidParameterException"


@pytest.mark.parametrize("kind", KINDS)
def test_paginator_returns_every_application_exactly_once(rm, app, kind):
    mine = {app(kind)[0]["arn"] for _ in range(7)}
    paginator = rm.get_paginator(f"list_{kind.snake}s")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 3}))
    listed = [s["arn"] for page in pages for s in page[kind.summaries_key]]
    assert len(pages) >= 3
    assert all(len(page[kind.summaries_key]) <= 3 for page in pages)
    assert len(listed) == len(set(listed)), "an application was listed twice"
    assert mine <= set(listed)

    everything = paginator.paginate(
        versionQualifier="ALL", PaginationConfig={"PageSize": 2}
    ).build_full_result()
    pairs = [(s["arn"], s["version"]) for s in everything[kind.summaries_key]]
    assert len(pairs) == len(set(pairs))
    assert {(arn, "$LATEST") for arn in mine} <= set(pairs)


# --- delete -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_delete_one_version(rm, app, kind):
    created, _, _ = app(kind)
    kind.call(rm, "create_version", application=created["arn"])
    kind.call(rm, "create_version", application=created["arn"])
    kind.call(rm, "delete", application=created["arn"], applicationVersion="1")
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        kind.call(rm, "describe", application=created["arn"], applicationVersion="1")
    assert kind.call(rm, "describe", application=created["arn"], applicationVersion="2")["version"] == "2"
    assert kind.call(rm, "describe", application=created["arn"])["version"] == "$LATEST"
    listed = names_listed(rm, kind, created["name"], versionQualifier="ALL")
    assert sorted(v for _, v in listed) == ["$LATEST", "2"]


@pytest.mark.parametrize("kind", KINDS)
def test_delete_whole_application(rm, app, bundles, kind):
    created, _, _ = app(kind)
    kind.call(rm, "create_version", application=created["arn"])
    response = kind.call(rm, "delete", application=created["arn"])
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        kind.call(rm, "describe", application=created["arn"])
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        kind.call(rm, "describe", application=created["arn"], applicationVersion="1")
    assert names_listed(rm, kind, created["name"], versionQualifier="ALL") == []

    # The name is free again; the new application is a different resource.
    source, _ = bundles.put()
    time.sleep(0.002)
    again = kind.create(rm, created["name"], [source])
    assert again["arn"] != created["arn"]
    assert again["tags"] == {}


# --- software suites, rendering engine, containers -------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "accepted"),
    [
        ({"name": "ROS", "version": "Melodic"}, True),
        ({"name": "ROS", "version": "Kinetic"}, True),
        ({"name": "ROS2", "version": "Foxy"}, True),
        ({"name": "General"}, True),
        ({"name": "ROS", "version": "Foxy"}, False),
        ({"name": "ROS2", "version": "Melodic"}, False),
        ({"name": "NotASuite", "version": "Melodic"}, False),
    ],
    ids=lambda v: "-".join(v.values()) if isinstance(v, dict) else str(v),
)
def test_robot_software_suite_rules(rm, bundles, suite, accepted):
    source, _ = bundles.put()
    name = unique("suite")
    if accepted:
        created = rm.create_robot_application(name=name, sources=[source], robotSoftwareSuite=suite)
        assert created["robotSoftwareSuite"] == suite
        assert rm.describe_robot_application(application=created["arn"])["robotSoftwareSuite"] == suite
    else:
        with pytest.raises(ClientError) as exc:
            rm.create_robot_application(name=name, sources=[source], robotSoftwareSuite=suite)
        assert error_code(exc) == "InvalidParameterException"
        assert "robotSoftwareSuite" in error_message(exc)
        assert names_listed(rm, ROBOT, name) == []


def test_simulation_suite_and_rendering_engine_are_echoed(rm, bundles):
    source, _ = bundles.put()
    created = rm.create_simulation_application(
        name=unique("sim"),
        sources=[source],
        simulationSoftwareSuite={"name": "Gazebo", "version": "11"},
        robotSoftwareSuite={"name": "ROS2", "version": "Foxy"},
        renderingEngine={"name": "OGRE", "version": "1.x"},
    )
    for response in (created, rm.describe_simulation_application(application=created["arn"])):
        assert response["simulationSoftwareSuite"] == {"name": "Gazebo", "version": "11"}
        assert response["robotSoftwareSuite"] == {"name": "ROS2", "version": "Foxy"}
        assert response["renderingEngine"] == {"name": "OGRE", "version": "1.x"}

    with pytest.raises(ClientError) as exc:
        rm.create_simulation_application(
            name=unique("sim"),
            sources=[source],
            simulationSoftwareSuite={"name": "Gazebo", "version": "Melodic"},
            robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        )
    assert error_code(exc) == "InvalidParameterException"
    assert "simulationSoftwareSuite" in error_message(exc)


IMAGE = "111111111111.dkr.ecr.us-east-1.amazonaws.com/my-robot:latest"


@pytest.mark.parametrize("kind", KINDS)
def test_container_image_application(rm, kind):
    suites = {"robotSoftwareSuite": {"name": "General"}}
    if kind is SIMULATION:
        suites["simulationSoftwareSuite"] = {"name": "SimulationRuntime"}
    name = unique("image")
    created = kind.call(rm, "create", name=name, environment={"uri": IMAGE}, **suites)
    assert created["environment"] == {"uri": IMAGE}
    assert created["robotSoftwareSuite"] == {"name": "General"}
    assert "sources" not in created or created["sources"] == []

    described = kind.call(rm, "describe", application=created["arn"])
    assert described["environment"] == {"uri": IMAGE}
    assert described["robotSoftwareSuite"] == {"name": "General"}
    if kind is SIMULATION:
        assert described["simulationSoftwareSuite"] == {"name": "SimulationRuntime"}

    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    version = kind.call(rm, "create_version", application=created["arn"], imageDigest=digest)
    assert version["version"] == "1"
    assert version["environment"] == {"uri": IMAGE}
    one = kind.call(rm, "describe", application=created["arn"], applicationVersion="1")
    assert one["environment"] == {"uri": IMAGE}
    assert one["imageDigest"] == digest


def test_version_limit_is_forty_per_application(rm, app):
    created, _, _ = app(ROBOT)
    arn = created["arn"]
    numbers = [rm.create_robot_application_version(application=arn)["version"] for _ in range(40)]
    assert numbers == [str(n) for n in range(1, 41)]
    with pytest.raises(rm.exceptions.LimitExceededException) as exc:
        rm.create_robot_application_version(application=arn)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Deleting one frees a slot, but not its number.
    rm.delete_robot_application(application=arn, applicationVersion="40")
    assert rm.create_robot_application_version(application=arn)["version"] == "41"
    rm.delete_robot_application(application=arn)


# --- the same flow on an S3 object store (moto_server) -----------------------------------------------


@pytest.fixture(scope="module")
def s3_server(moto_s3):
    with running_server(config={"object_store": moto_s3.store_config()}) as srv:
        yield srv


def test_applications_on_an_s3_object_store(s3_server, moto_s3):
    s3 = moto_s3.client()
    bucket = "s3-bundles-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="robot.tar.gz", Body=b"single part bundle")
    single_etag = s3.head_object(Bucket=bucket, Key="robot.tar.gz")["ETag"].strip('"')
    assert single_etag == hashlib.md5(b"single part bundle").hexdigest()

    # A multipart upload has an ETag that is not an MD5 ("<hex>-<parts>"); RoboMaker stores what S3 says.
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big.tar")
    parts = []
    for number, chunk in enumerate([b"a" * (5 * 1024 * 1024), b"tail"], start=1):
        part = s3.upload_part(
            Bucket=bucket, Key="big.tar", UploadId=upload["UploadId"], PartNumber=number, Body=chunk
        )
        parts.append({"ETag": part["ETag"], "PartNumber": number})
    s3.complete_multipart_upload(
        Bucket=bucket, Key="big.tar", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    multi_etag = s3.head_object(Bucket=bucket, Key="big.tar")["ETag"].strip('"')
    assert multi_etag.endswith("-2")

    rm = s3_server.client()
    sources = [
        {"s3Bucket": bucket, "s3Key": "robot.tar.gz", "architecture": "X86_64"},
        {"s3Bucket": bucket, "s3Key": "big.tar", "architecture": "ARM64"},
    ]
    created = rm.create_robot_application(
        name=unique("s3"), sources=sources, robotSoftwareSuite={"name": "ROS", "version": "Melodic"}
    )
    version = rm.create_robot_application_version(
        application=created["arn"], s3Etags=[single_etag, multi_etag]
    )
    assert [s["etag"] for s in version["sources"]] == [single_etag, multi_etag]
    described = rm.describe_robot_application(application=created["arn"], applicationVersion="1")
    assert [s["etag"] for s in described["sources"]] == [single_etag, multi_etag]

    # The object changes in S3: a version made now records the new ETag; the expected old one is refused.
    s3.put_object(Bucket=bucket, Key="robot.tar.gz", Body=b"changed bundle")
    new_etag = s3.head_object(Bucket=bucket, Key="robot.tar.gz")["ETag"].strip('"')
    with pytest.raises(ClientError) as exc:
        rm.create_robot_application_version(application=created["arn"], s3Etags=[single_etag, multi_etag])
    assert error_code(exc) == "InvalidParameterException"
    two = rm.create_robot_application_version(application=created["arn"])
    assert two["version"] == "2"
    assert two["sources"][0]["etag"] == new_etag

    missing_name = unique("s3-missing")
    with pytest.raises(ClientError) as exc:
        rm.create_robot_application(
            name=missing_name,
            sources=[{"s3Bucket": bucket, "s3Key": "absent.tar.gz", "architecture": "X86_64"}],
            robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        )
    assert error_code(exc) == "InvalidParameterException"
    assert "sources" in error_message(exc)
    assert names_listed(rm, ROBOT, missing_name) == []


# --- concurrent clients -----------------------------------------------------------------------------


def test_concurrent_creates_of_one_name_make_exactly_one_application(server, bundles):
    from concurrent.futures import ThreadPoolExecutor

    source, _ = bundles.put()
    name = unique("race")

    def create(_):
        client = server.client()
        try:
            return client.create_robot_application(
                name=name, sources=[source], robotSoftwareSuite={"name": "ROS", "version": "Melodic"}
            )["arn"]
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(8)))
    arns = [o for o in outcomes if o.startswith("arn:")]
    assert len(arns) == 1, outcomes
    assert sorted(set(outcomes) - set(arns)) == ["ResourceAlreadyExistsException"]
    assert names_listed(server.client(), ROBOT, name) == [(name, "$LATEST")]


def test_concurrent_create_version_hands_out_distinct_numbers(server, rm, app):
    from concurrent.futures import ThreadPoolExecutor

    created, _, _ = app(ROBOT)

    def create_version(_):
        return server.client().create_robot_application_version(application=created["arn"])["version"]

    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(create_version, range(8)))
    assert sorted(numbers, key=int) == [str(n) for n in range(1, 9)]


def test_list_rejects_unknown_filter_names(rm):
    with pytest.raises(ClientError) as exc:
        rm.list_robot_applications(filters=[{"name": "status", "values": ["x"]}])
    assert error_code(exc) == "InvalidParameterException"
    assert "filters" in error_message(exc)


@pytest.mark.parametrize("max_results", [-1, 0])
def test_list_with_a_page_size_below_one_is_refused_or_still_pages(rm, app, max_results):
    # The model gives maxResults no minimum, so botocore sends it; whatever the server answers must not
    # leave the client stuck with a nextToken the server then refuses.
    created, _, _ = app(ROBOT)
    try:
        page = rm.list_robot_applications(maxResults=max_results)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidParameterException"
        assert "maxResults" in exc.response["Error"]["Message"]
        return
    listed = [s["arn"] for s in page["robotApplicationSummaries"]]
    for _ in range(1000):
        if "nextToken" not in page:
            break
        page = rm.list_robot_applications(maxResults=max_results, nextToken=page["nextToken"])
        listed += [s["arn"] for s in page["robotApplicationSummaries"]]
    assert created["arn"] in listed
    assert len(listed) == len(set(listed))


# --- the fast read path of Describe (store/db.py FastReader) ------------------------------------------


@pytest.fixture
def database(tmp_path):
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    yield db
    db.dispose()


def _add_application(db: Database, name: str, spec: dict) -> str:
    arn = f"arn:aws:robomaker:{REGION}:{ACCOUNT}:robot-application/{name}/1551203427717"
    with db.transaction() as session:
        row = app_store.ApplicationRow(
            account_id=ACCOUNT, region=REGION, kind="robot", name=name, arn=arn, created_ms=1
        )
        session.add(row)
        session.flush()
        session.add(
            app_store.ApplicationVersionRow(
                application_id=row.id,
                version=app_store.LATEST,
                version_number=None,
                revision_id="r1",
                last_updated_at=1551203427.717,
                spec=spec,
            )
        )
        tag_store.put_tags(session, arn, {"b": "2", "a": "1"})
    return arn


def test_fast_reads_match_sqlalchemy_reads(database):
    spec = {"robotSoftwareSuite": {"name": "ROS", "version": "Melodic"}, "sources": [{"etag": "e"}]}
    arn = _add_application(database, "fast", spec)
    with database.connect() as connection:
        expected = app_store.describe_row(connection, arn, app_store.LATEST)
        expected_tags = tag_store.get_tags(connection, arn)
    results = []
    for _ in range(3):  # first sight through SQLAlchemy, then prepared
        with database.reader() as reader:
            results.append(reader.execute(app_store._DESCRIBE, {"arn": arn, "version": app_store.LATEST}))
            row = app_store.describe_row(reader, arn, app_store.LATEST)
            assert tuple(row) == tuple(expected)
            assert (row.spec, row.kind, row.last_updated_at) == (spec, "robot", 1551203427.717)
            assert tag_store.get_tags(reader, arn) == expected_tags == {"a": "1", "b": "2"}
            assert app_store.describe_row(reader, arn, "1") is None
    assert isinstance(results[-1], FastResult)


def test_fast_reads_see_every_committed_write(database):
    arn = _add_application(database, "fresh", {"robotSoftwareSuite": {"name": "ROS"}})
    for value in ("1", "2", "3"):
        with database.transaction() as session:
            tag_store.put_tags(session, arn, {"a": value})
        with database.reader() as reader:
            assert tag_store.get_tags(reader, arn)["a"] == value


def test_statements_built_per_call_run_through_sqlalchemy(database):
    _add_application(database, "listed", {"robotSoftwareSuite": {"name": "ROS"}})
    for _ in range(3):
        with database.reader() as reader:
            rows = app_store.list_versions(
                reader, ACCOUNT, REGION, "robot", name=None, all_versions=False, offset=0, limit=10
            )
            assert [row.name for row in rows] == ["listed"]


def test_a_prepared_statement_still_needs_its_parameters(database):
    arn = _add_application(database, "params", {"robotSoftwareSuite": {"name": "ROS"}})
    with database.reader() as reader:
        for _ in range(2):
            app_store.application_identity(reader, arn)
        with pytest.raises(KeyError, match="arn"):
            reader.execute(app_store._EXISTS, {})


def test_reader_connections_close_with_the_database_and_reopen(database):
    arn = _add_application(database, "reopen", {"robotSoftwareSuite": {"name": "ROS"}})
    with database.reader() as reader:
        assert app_store.application_identity(reader, arn).kind == "robot"
    database.dispose()
    with database.reader() as reader:
        assert app_store.application_identity(reader, arn).kind == "robot"
