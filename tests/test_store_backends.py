"""The same application and tag scenario on SQLite and PostgreSQL, and data surviving a server restart."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import find_postgres_bin, running_server
from openrobomaker.objectstore import ObjectStoreConfig, open_store

BUCKET = "store-bundles"
SUITE = {"name": "ROS", "version": "Melodic"}
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="module")
def postgres(request) -> str:
    if find_postgres_bin() is None:
        pytest.fail(
            "PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): "
            "install them with `apt-get install -y postgresql` (scripts/install-system-deps.sh --with-test)"
        )
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def config_for(request):
    """The server config of a backend: SQLite in the data dir (the default) or the shared PostgreSQL."""

    def make(backend: str) -> dict:
        return {"database_url": request.getfixturevalue("postgres")} if backend == "postgresql" else {}

    return make


@contextlib.contextmanager
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="orm-store-") as directory:
        yield Path(directory)


def put_bundle(server, key: str, content: bytes) -> dict:
    store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
    store.create_bucket(BUCKET)
    store.put_bytes(BUCKET, key, content)
    return {"s3Bucket": BUCKET, "s3Key": key, "architecture": "X86_64"}


def versions_of(rm, name: str) -> list[str]:
    listed = rm.list_robot_applications(versionQualifier="ALL", filters=[{"name": "name", "values": [name]}])
    return sorted(s["version"] for s in listed["robotApplicationSummaries"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_application_and_tag_scenario(config_for, backend):
    with data_dir() as directory, running_server(config=config_for(backend), data_dir=directory) as server:
        rm = server.client()
        name = f"store-{backend}-{uuid.uuid4().hex[:8]}"
        first = put_bundle(server, f"{name}/v1.tar.gz", b"first")
        second = put_bundle(server, f"{name}/v2.tar.gz", b"second")

        created = rm.create_robot_application(
            name=name, sources=[first], robotSoftwareSuite=SUITE, tags={"backend": backend, "a b": "c"}
        )
        with pytest.raises(rm.exceptions.ResourceAlreadyExistsException):
            rm.create_robot_application(name=name, sources=[first], robotSoftwareSuite=SUITE)
        assert rm.create_robot_application_version(application=created["arn"])["version"] == "1"
        updated = rm.update_robot_application(
            application=created["arn"],
            sources=[second],
            robotSoftwareSuite=SUITE,
            currentRevisionId=created["revisionId"],
        )
        assert updated["revisionId"] != created["revisionId"]
        assert rm.create_robot_application_version(application=created["arn"])["version"] == "2"
        assert versions_of(rm, name) == ["$LATEST", "1", "2"]
        assert (
            rm.describe_robot_application(application=created["arn"], applicationVersion="1")["sources"][0][
                "s3Key"
            ]
            == first["s3Key"]
        )
        assert rm.describe_robot_application(application=created["arn"])["sources"] == [second]

        rm.tag_resource(resourceArn=created["arn"], tags={"more": "tags"})
        rm.untag_resource(resourceArn=created["arn"], tagKeys=["a b"])
        assert rm.list_tags_for_resource(resourceArn=created["arn"])["tags"] == {
            "backend": backend,
            "more": "tags",
        }

        pages = rm.get_paginator("list_robot_applications").paginate(
            versionQualifier="ALL", PaginationConfig={"PageSize": 1}
        )
        mine = [
            s["version"] for page in pages for s in page["robotApplicationSummaries"] if s["name"] == name
        ]
        assert sorted(mine) == ["$LATEST", "1", "2"]

        rm.delete_robot_application(application=created["arn"], applicationVersion="1")
        assert versions_of(rm, name) == ["$LATEST", "2"]
        assert rm.create_robot_application_version(application=created["arn"])["version"] == "3"
        rm.delete_robot_application(application=created["arn"])
        assert versions_of(rm, name) == []
        with pytest.raises(rm.exceptions.ResourceNotFoundException):
            rm.describe_robot_application(application=created["arn"])
        with pytest.raises(rm.exceptions.ResourceNotFoundException):
            rm.list_tags_for_resource(resourceArn=created["arn"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_survives_a_restart(config_for, backend):
    with data_dir() as directory:
        config = config_for(backend)
        name = f"restart-{backend}-{uuid.uuid4().hex[:8]}"
        with running_server(config=config, data_dir=directory) as server:
            rm = server.client()
            source = put_bundle(server, f"{name}.tar.gz", b"kept")
            created = rm.create_robot_application(
                name=name, sources=[source], robotSoftwareSuite=SUITE, tags={"k": "v"}
            )
            version = rm.create_robot_application_version(application=created["arn"])
            simulation = rm.create_simulation_application(
                name=name,
                sources=[source],
                robotSoftwareSuite=SUITE,
                simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
                renderingEngine={"name": "OGRE", "version": "1.x"},
            )

        # Same data dir / database URL, a fresh process (and port).
        with running_server(config=config, data_dir=directory) as server:
            rm = server.client()
            described = rm.describe_robot_application(application=created["arn"])
            assert described["revisionId"] == created["revisionId"]
            assert described["lastUpdatedAt"] == created["lastUpdatedAt"]
            assert described["tags"] == {"k": "v"}
            one = rm.describe_robot_application(application=created["arn"], applicationVersion="1")
            assert one["revisionId"] == version["revisionId"]
            assert one["sources"] == version["sources"]
            sim = rm.describe_simulation_application(application=simulation["arn"])
            assert sim["renderingEngine"] == {"name": "OGRE", "version": "1.x"}
            assert sim["simulationSoftwareSuite"] == {"name": "Gazebo", "version": "9"}
            # Version numbers continue where they were; names stay taken.
            assert rm.create_robot_application_version(application=created["arn"])["version"] == "2"
            with pytest.raises(rm.exceptions.ResourceAlreadyExistsException):
                rm.create_robot_application(name=name, sources=[source], robotSoftwareSuite=SUITE)
            rm.delete_robot_application(application=created["arn"])
            rm.delete_simulation_application(application=simulation["arn"])


def test_two_servers_on_one_postgresql_share_their_data(postgres):
    with data_dir() as directory:
        objects = {"kind": "local", "root": str(directory / "shared-objects")}
        config = {"database_url": postgres, "object_store": objects}
        with running_server(config=config) as one, running_server(config=config) as two:
            store = open_store(ObjectStoreConfig(**objects))
            store.create_bucket(BUCKET)
            store.put_bytes(BUCKET, "shared.tar.gz", b"shared")
            source = {"s3Bucket": BUCKET, "s3Key": "shared.tar.gz", "architecture": "X86_64"}
            name = f"shared-{uuid.uuid4().hex[:8]}"
            created = one.client().create_robot_application(
                name=name, sources=[source], robotSoftwareSuite=SUITE
            )
            assert two.client().describe_robot_application(application=created["arn"])["name"] == name
            assert two.client().create_robot_application_version(application=created["arn"])["version"] == "1"
            assert one.client().create_robot_application_version(application=created["arn"])["version"] == "2"
            with pytest.raises(two.client().exceptions.ResourceAlreadyExistsException):
                two.client().create_robot_application(name=name, sources=[source], robotSoftwareSuite=SUITE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_versions_get_distinct_numbers(config_for, backend):
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import ClientError

    with data_dir() as directory, running_server(config=config_for(backend), data_dir=directory) as server:
        name = f"race-{backend}-{uuid.uuid4().hex[:8]}"
        source = put_bundle(server, f"{name}.tar.gz", b"race")
        created = server.client().create_robot_application(
            name=name, sources=[source], robotSoftwareSuite=SUITE
        )

        def create_version(_):
            try:
                return server.client().create_robot_application_version(application=created["arn"])["version"]
            except ClientError as exc:
                return exc.response["Error"]["Code"]

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(create_version, range(16)))
        assert sorted(outcomes, key=lambda v: int(v) if v.isdigit() else 0) == [
            str(n) for n in range(1, 17)
        ], outcomes
        assert versions_of(server.client(), name) == sorted(["$LATEST", *[str(n) for n in range(1, 17)]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_updates_with_one_revision_id_let_exactly_one_win(config_for, backend):
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import ClientError

    with data_dir() as directory, running_server(config=config_for(backend), data_dir=directory) as server:
        name = f"lock-{backend}-{uuid.uuid4().hex[:8]}"
        sources = [put_bundle(server, f"{name}/{i}.tar.gz", str(i).encode()) for i in range(16)]
        created = server.client().create_robot_application(
            name=name, sources=[sources[0]], robotSoftwareSuite=SUITE
        )

        def update(index):
            try:
                return server.client().update_robot_application(
                    application=created["arn"],
                    sources=[sources[index]],
                    robotSoftwareSuite=SUITE,
                    currentRevisionId=created["revisionId"],
                )["revisionId"]
            except ClientError as exc:
                return exc.response["Error"]["Code"]

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(update, range(16)))
        winners = [o for o in outcomes if o != "InvalidParameterException"]
        assert len(winners) == 1, outcomes
        assert (
            server.client().describe_robot_application(application=created["arn"])["revisionId"] == winners[0]
        )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", BACKENDS)
def test_deployment_to_real_agents(config_for, backend, tmp_path):
    """Agent polls, step reports (group commits of prepared statements) and the rollout controller's
    waves on both stores: two real agents, one robot per wave, every robot InSync, the fleet updated."""
    from deploy_helpers import app_config, fleet_of_agents, object_store, robot_application, wait_for_job

    with data_dir() as directory, running_server(config=config_for(backend), data_dir=directory) as server:
        rm = server.client()
        app = robot_application(rm, object_store(server), tmp_path, f"backend-{backend}")
        with fleet_of_agents(server, rm, tmp_path, f"fleet-{backend}", 2) as (fleet, _agents):
            job = rm.create_deployment_job(
                fleet=fleet,
                deploymentApplicationConfigs=app_config(app),
                deploymentConfig={
                    "concurrentDeploymentPercentage": 50,
                    "robotDeploymentTimeoutInSeconds": 60,
                },
            )["arn"]
            described = wait_for_job(rm, job)
            assert described["status"] == "Succeeded", described
            summaries = described["robotDeploymentSummary"]
            assert [s["status"] for s in summaries] == ["InSync", "InSync"]
            assert all(s["progressDetail"]["currentProgress"] == "Finished" for s in summaries)
            robots = rm.list_robots(filters=[{"name": "fleetName", "values": [f"fleet-{backend}"]}])["robots"]
            assert {r["status"] for r in robots} == {"InSync"}
            fleet_view = rm.describe_fleet(fleet=fleet)
            assert fleet_view["lastDeploymentJob"] == job
            assert fleet_view["lastDeploymentStatus"] == "Succeeded"
