"""Shared fixtures: a live server on a loopback port (embedded defaults), moto_server as S3, PostgreSQL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import running_moto_s3, running_postgres, running_server  # noqa: E402


@pytest.fixture(scope="session")
def moto_s3():
    with running_moto_s3() as moto:
        yield moto


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server with the embedded defaults (SQLite + local object store) shared by a test session."""
    with running_server(data_dir=tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture
def rm(server):
    return server.client()


@pytest.fixture(scope="session")
def postgres_url():
    with running_postgres() as url:
        yield url
