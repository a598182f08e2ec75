"""Tags through boto3's real robomaker client (spec §5): create-time tags, Tag/Untag/ListTags, limits."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

from openrobomaker.objectstore import ObjectStoreConfig, open_store

BUCKET = "tag-bundles"
SUITE = {"name": "ROS", "version": "Melodic"}
SIM_SUITE = {"name": "Gazebo", "version": "9"}


def unique(prefix: str = "tagged") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def error_code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def source(server):
    store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
    store.create_bucket(BUCKET)
    store.put_bytes(BUCKET, "robot.tar.gz", b"a bundle for tag tests")
    return {"s3Bucket": BUCKET, "s3Key": "robot.tar.gz", "architecture": "X86_64"}


@pytest.fixture
def make_app(rm, source):
    def make(kind: str = "robot", tags: dict | None = None) -> dict:
        extra = {"tags": tags} if tags is not None else {}
        if kind == "robot":
            return rm.create_robot_application(
                name=unique(), sources=[source], robotSoftwareSuite=SUITE, **extra
            )
        return rm.create_simulation_application(
            name=unique(),
            sources=[source],
            robotSoftwareSuite=SUITE,
            simulationSoftwareSuite=SIM_SUITE,
            **extra,
        )

    return make


def tags_of(rm, arn: str) -> dict[str, str]:
    return rm.list_tags_for_resource(resourceArn=arn)["tags"]


@pytest.mark.parametrize("kind", ["robot", "simulation"])
def test_tags_given_at_create(rm, make_app, kind):
    tags = {"env": "dev", "team name": "a b", "path/like:key=+": "v.1-_", "empty": ""}
    created = make_app(kind, tags)
    assert created["tags"] == tags
    assert tags_of(rm, created["arn"]) == tags
    describe = rm.describe_robot_application if kind == "robot" else rm.describe_simulation_application
    assert describe(application=created["arn"])["tags"] == tags


@pytest.mark.parametrize("kind", ["robot", "simulation"])
def test_tag_untag_and_list(rm, make_app, kind):
    created = make_app(kind, {"env": "dev", "keep": "me"})
    arn = created["arn"]

    response = rm.tag_resource(resourceArn=arn, tags={"env": "prod", "owner team": "robots", "x": ""})
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    # Re-adding a key overwrites its value.
    assert tags_of(rm, arn) == {"env": "prod", "keep": "me", "owner team": "robots", "x": ""}

    rm.untag_resource(resourceArn=arn, tagKeys=["owner team", "env", "never-there"])
    assert tags_of(rm, arn) == {"keep": "me", "x": ""}

    rm.untag_resource(resourceArn=arn, tagKeys=["keep", "x"])
    assert tags_of(rm, arn) == {}


def test_tags_are_case_sensitive(rm, make_app):
    arn = make_app(tags={"Env": "A"})["arn"]
    rm.tag_resource(resourceArn=arn, tags={"env": "b"})
    assert tags_of(rm, arn) == {"Env": "A", "env": "b"}
    rm.untag_resource(resourceArn=arn, tagKeys=["ENV"])
    assert tags_of(rm, arn) == {"Env": "A", "env": "b"}


def test_tags_do_not_change_the_application(rm, make_app):
    created = make_app()
    rm.tag_resource(resourceArn=created["arn"], tags={"a": "b"})
    described = rm.describe_robot_application(application=created["arn"])
    assert described["revisionId"] == created["revisionId"]
    assert described["tags"] == {"a": "b"}


def fifty_tags(prefix: str = "k") -> dict[str, str]:
    return {f"{prefix}{i}": str(i) for i in range(50)}


def test_at_most_fifty_tags_at_create(rm, source):
    name = unique()
    too_many = {**fifty_tags(), "one-more": "x"}
    with pytest.raises(ClientError) as exc:
        rm.create_robot_application(name=name, sources=[source], robotSoftwareSuite=SUITE, tags=too_many)
    assert error_code(exc) == "InvalidParameterException"
    assert "tags" in exc.value.response["Error"]["Message"]
    assert (
        rm.list_robot_applications(filters=[{"name": "name", "values": [name]}])["robotApplicationSummaries"]
        == []
    )

    created = rm.create_robot_application(
        name=name, sources=[source], robotSoftwareSuite=SUITE, tags=fifty_tags()
    )
    assert len(tags_of(rm, created["arn"])) == 50


def test_at_most_fifty_tags_on_a_resource(rm, make_app):
    forty_nine = dict(list(fifty_tags().items())[:49])
    arn = make_app(tags=forty_nine)["arn"]
    rm.tag_resource(resourceArn=arn, tags={"k0": "overwritten", "k49": "fiftieth"})
    assert len(tags_of(rm, arn)) == 50
    with pytest.raises(ClientError) as exc:
        rm.tag_resource(resourceArn=arn, tags={"fifty-first": "x"})
    assert error_code(exc) == "InvalidParameterException"
    tags = tags_of(rm, arn)
    assert len(tags) == 50 and "fifty-first" not in tags and tags["k0"] == "overwritten"

    with pytest.raises(ClientError) as exc:
        rm.tag_resource(resourceArn=make_app()["arn"], tags={**fifty_tags("n"), "one-more": "x"})
    assert error_code(exc) == "InvalidParameterException"


@pytest.mark.parametrize(
    ("tags", "accepted"),
    [
        ({"k" * 128: "v"}, True),
        ({"k" * 129: "v"}, False),
        ({"k": "v" * 256}, True),
        ({"k": "v" * 257}, False),
        ({"bad!key": "v"}, False),
        ({"k": "bad\nvalue"}, False),
    ],
    ids=["key-128", "key-129", "value-256", "value-257", "key-pattern", "value-pattern"],
)
def test_tag_key_and_value_limits(rm, make_app, tags, accepted):
    arn = make_app()["arn"]
    if accepted:
        rm.tag_resource(resourceArn=arn, tags=tags)
        assert tags_of(rm, arn) == tags
    else:
        with pytest.raises(ClientError) as exc:
            rm.tag_resource(resourceArn=arn, tags=tags)
        assert error_code(exc) == "InvalidParameterException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "tags" in exc.value.response["Error"]["Message"]
        assert tags_of(rm, arn) == {}


def test_aws_prefix_is_reserved(rm, make_app, source):
    arn = make_app()["arn"]
    with pytest.raises(ClientError) as exc:
        rm.tag_resource(resourceArn=arn, tags={"aws:cloudformation:stack-name": "x", "fine": "y"})
    assert error_code(exc) == "InvalidParameterException"
    assert tags_of(rm, arn) == {}

    name = unique()
    with pytest.raises(ClientError) as exc:
        rm.create_robot_application(
            name=name, sources=[source], robotSoftwareSuite=SUITE, tags={"aws:x": "y"}
        )
    assert error_code(exc) == "InvalidParameterException"
    assert (
        rm.list_robot_applications(filters=[{"name": "name", "values": [name]}])["robotApplicationSummaries"]
        == []
    )


UNKNOWN = "arn:aws:robomaker:us-east-1:000000000000:robot-application/never-created/1551203427717"
OTHER_ACCOUNT = "arn:aws:robomaker:us-east-1:111111111111:robot-application/{name}/{ms}"


@pytest.mark.parametrize("operation", ["list", "tag", "untag"])
def test_unknown_resource_is_not_found(rm, operation):
    with pytest.raises(rm.exceptions.ResourceNotFoundException) as exc:
        if operation == "list":
            rm.list_tags_for_resource(resourceArn=UNKNOWN)
        elif operation == "tag":
            rm.tag_resource(resourceArn=UNKNOWN, tags={"a": "b"})
        else:
            rm.untag_resource(resourceArn=UNKNOWN, tagKeys=["a"])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_another_accounts_arn_is_not_found(rm, make_app):
    created = make_app(tags={"a": "b"})
    # The same resource path under another account: a resource this caller cannot see.
    name, ms = created["arn"].rsplit("/", 2)[-2:]
    foreign = OTHER_ACCOUNT.format(name=name, ms=ms)
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        rm.list_tags_for_resource(resourceArn=foreign)
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        rm.tag_resource(resourceArn=foreign, tags={"c": "d"})
    assert tags_of(rm, created["arn"]) == {"a": "b"}


def test_not_a_robomaker_arn_is_invalid(rm):
    with pytest.raises(ClientError) as exc:
        rm.list_tags_for_resource(resourceArn="arn:aws:s3:::my-bucket")
    assert error_code(exc) in {"InvalidParameterException", "ResourceNotFoundException"}
    with pytest.raises(ClientError) as exc:
        rm.list_tags_for_resource(resourceArn="not-an-arn")
    assert error_code(exc) == "InvalidParameterException"


def test_tags_vanish_with_the_resource(rm, make_app):
    created = make_app(tags={"a": "b"})
    rm.delete_robot_application(application=created["arn"])
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        rm.list_tags_for_resource(resourceArn=created["arn"])
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        rm.tag_resource(resourceArn=created["arn"], tags={"c": "d"})
