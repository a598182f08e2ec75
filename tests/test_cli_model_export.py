"""CLI: `openrobomaker model export DIR` gives boto3 releases without `robomaker` a working client, and
`openrobomaker s3 cp` puts a bundle where the server finds it.

The newest boto3 is installed from PyPI into a venv cached under ~/.cache/openrobomaker-test-venvs/,
one per day, so repeated runs are fast and a new boto3 release is picked up the next day.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import botocore.loaders
import pytest

from openrobomaker.objectstore import ObjectStoreConfig, open_store

VENV_CACHE = Path.home() / ".cache" / "openrobomaker-test-venvs"
MODEL_FILES = ("robomaker/2018-06-29/service-2.json", "robomaker/2018-06-29/paginators-1.json")


def openrobomaker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed console script (next to this interpreter), as a user would."""
    script = Path(sys.executable).with_name("openrobomaker")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "openrobomaker.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)


def _without_docs(value):
    if isinstance(value, dict):
        return {k: _without_docs(v) for k, v in value.items() if k != "documentation"}
    if isinstance(value, list):
        return [_without_docs(v) for v in value]
    return value


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    result = openrobomaker("model", "export", str(directory))
    assert result.returncode == 0, result.stderr
    for name in MODEL_FILES:
        assert str(directory / name) in result.stdout
    assert "AWS_DATA_PATH" in result.stdout
    return directory


def test_exported_model_is_the_robomaker_wire_contract(model_dir):
    exported = json.loads((model_dir / MODEL_FILES[0]).read_text())
    paginators = json.loads((model_dir / MODEL_FILES[1]).read_text())
    loader = botocore.loaders.Loader()
    reference = loader.load_service_model("robomaker", "service-2", api_version="2018-06-29")
    reference_paginators = loader.load_service_model("robomaker", "paginators-1", api_version="2018-06-29")

    assert exported["metadata"] == reference["metadata"]
    assert len(exported["operations"]) == 57
    assert _without_docs(exported["operations"]) == _without_docs(reference["operations"])
    assert _without_docs(exported["shapes"]) == _without_docs(reference["shapes"])
    assert paginators == reference_paginators


def test_export_into_an_existing_directory_overwrites(model_dir):
    target = model_dir / MODEL_FILES[0]
    target.write_text("{}")
    result = openrobomaker("model", "export", str(model_dir))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(target.read_text())["operations"]) == 57


# --- the newest boto3, in a venv of its own ------------------------------------------------------------


def newest_boto3_python() -> Path:
    """A venv with the newest boto3 from PyPI, built once a day; concurrent test workers wait for it."""
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    target = VENV_CACHE / f"boto3-newest-{datetime.date.today():%Y%m%d}"
    python = target / "bin" / "python"
    with open(VENV_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return python
        for old in VENV_CACHE.glob("boto3-newest-*"):
            shutil.rmtree(old, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, timeout=300)
        install = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--upgrade",
                "boto3",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if install.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            pytest.fail(f"cannot install the newest boto3 from PyPI into {target}:\n{install.stderr[-3000:]}")
        (target / ".complete").write_text(datetime.datetime.now().isoformat())
    return python


PROBE = r"""
import json, sys
import boto3, botocore
from botocore.exceptions import UnknownServiceError

endpoint, bucket, key, name = sys.argv[1:]
out = {"boto3": boto3.__version__, "botocore": botocore.__version__}
out["listed"] = "robomaker" in boto3.session.Session().get_available_services()
try:
    boto3.client("robomaker", region_name="us-east-1")
    out["client"] = True
except UnknownServiceError:
    out["client"] = False
if out["client"]:
    rm = boto3.client(
        "robomaker", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )
    out["before"] = [s["name"] for s in rm.list_robot_applications()["robotApplicationSummaries"]]
    created = rm.create_robot_application(
        name=name, sources=[{"s3Bucket": bucket, "s3Key": key, "architecture": "X86_64"}],
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"}, tags={"via": "newest-boto3"},
    )
    version = rm.create_robot_application_version(application=created["arn"])
    described = rm.describe_robot_application(application=created["arn"], applicationVersion="1")
    out["created"] = {"arn": created["arn"], "version": created["version"], "tags": created["tags"]}
    out["described"] = {
        "name": described["name"], "version": described["version"], "etag": described["sources"][0]["etag"],
        "lastUpdatedAt": described["lastUpdatedAt"].timestamp(), "tags": described["tags"],
    }
    try:
        rm.describe_robot_application(application=created["arn"] + "0")
    except rm.exceptions.ResourceNotFoundException:
        out["not_found_class"] = True
    pages = rm.get_paginator("list_robot_applications").paginate(PaginationConfig={"PageSize": 1})
    out["paginated"] = [s["name"] for page in pages for s in page["robotApplicationSummaries"]]
print(json.dumps(out))
"""


def run_probe(python: Path, tmp_path: Path, args: list[str], data_path: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    if data_path is not None:
        env["AWS_DATA_PATH"] = str(data_path)
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = subprocess.run(
        [str(python), str(script), *args], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_newest_boto3_talks_to_the_server_through_the_exported_model(server, model_dir, tmp_path):
    python = newest_boto3_python()
    bundle = tmp_path / "robot.tar.gz"
    bundle.write_bytes(b"bundle for the newest boto3 " + uuid.uuid4().bytes)
    copied = openrobomaker(
        "s3", "cp", str(bundle), "s3://newest-boto3/robot.tar.gz", "--data-dir", str(server.data_dir)
    )
    assert copied.returncode == 0, copied.stderr
    name = f"newest-{uuid.uuid4().hex[:8]}"
    args = [server.endpoint, "newest-boto3", "robot.tar.gz", name]

    alone = run_probe(python, tmp_path, args, data_path=None)
    assert alone["listed"] is False and alone["client"] is False, (
        f"boto3 {alone['boto3']} ships robomaker itself; this test needs a release without it"
    )

    with_model = run_probe(python, tmp_path, args, data_path=model_dir)
    assert with_model["boto3"] == alone["boto3"]
    assert with_model["listed"] is True and with_model["client"] is True
    assert name not in with_model["before"]
    assert with_model["created"]["arn"].startswith(
        f"arn:aws:robomaker:us-east-1:000000000000:robot-application/{name}/"
    )
    assert with_model["created"]["version"] == "$LATEST"
    assert with_model["created"]["tags"] == {"via": "newest-boto3"}
    assert with_model["described"]["version"] == "1"
    assert with_model["described"]["etag"] == hashlib.md5(bundle.read_bytes()).hexdigest()
    assert with_model["described"]["tags"] == {"via": "newest-boto3"}
    assert abs(with_model["described"]["lastUpdatedAt"] - datetime.datetime.now().timestamp()) < 600
    assert with_model.get("not_found_class") is True
    assert with_model["paginated"].count(name) == 1


# --- openrobomaker s3 cp --------------------------------------------------------------------------------


def test_s3_cp_puts_a_file_into_the_local_store(tmp_path):
    data_dir = tmp_path / "data"
    bundle = tmp_path / "robot.tar.gz"
    bundle.write_bytes(os.urandom(300_000))
    result = openrobomaker(
        "s3", "cp", str(bundle), "s3://my-bundles/apps/robot.tar.gz", "--data-dir", str(data_dir)
    )
    assert result.returncode == 0, result.stderr
    digest = hashlib.md5(bundle.read_bytes()).hexdigest()
    assert digest in result.stdout

    store = open_store(ObjectStoreConfig(kind="local", root=str(data_dir / "objects")))
    info = store.head("my-bundles", "apps/robot.tar.gz")
    assert info.etag == digest and info.size == 300_000
    with store.open("my-bundles", "apps/robot.tar.gz") as stream:
        assert stream.read() == bundle.read_bytes()

    # A destination ending in "/" keeps the file's name.
    again = openrobomaker("s3", "cp", str(bundle), "s3://my-bundles/copies/", "--data-dir", str(data_dir))
    assert again.returncode == 0, again.stderr
    assert store.head("my-bundles", "copies/robot.tar.gz").etag == digest


@pytest.mark.parametrize("destination", ["my-bundles/robot.tar.gz", "s3://only-a-bucket", "s3:///key"])
def test_s3_cp_rejects_a_bad_destination(tmp_path, destination):
    bundle = tmp_path / "robot.tar.gz"
    bundle.write_bytes(b"x")
    result = openrobomaker("s3", "cp", str(bundle), destination, "--data-dir", str(tmp_path / "data"))
    assert result.returncode != 0
    assert "s3://bucket/key" in result.stderr


def test_s3_cp_of_a_missing_file_fails_cleanly(tmp_path):
    result = openrobomaker(
        "s3", "cp", str(tmp_path / "absent"), "s3://b-k/x", "--data-dir", str(tmp_path / "data")
    )
    assert result.returncode != 0
    assert "absent" in result.stderr
    assert "Traceback" not in result.stderr
    store = open_store(ObjectStoreConfig(kind="local", root=str(tmp_path / "data" / "objects")))
    if store.bucket_exists("b-k"):
        assert list(store.list("b-k")) == []


def test_quickstart_cp_then_create(server, rm, tmp_path):
    """The README's quickstart: copy a bundle into the server's data dir, then create an application."""
    bundle = tmp_path / "hello.tar.gz"
    bundle.write_bytes(b"quickstart bundle " + uuid.uuid4().bytes)
    key = f"quickstart/{uuid.uuid4().hex[:8]}.tar.gz"
    result = openrobomaker(
        "s3", "cp", str(bundle), f"s3://quickstart/{key}", "--data-dir", str(server.data_dir)
    )
    assert result.returncode == 0, result.stderr
    created = rm.create_robot_application(
        name=f"hello-{uuid.uuid4().hex[:8]}",
        sources=[{"s3Bucket": "quickstart", "s3Key": key, "architecture": "X86_64"}],
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
    )
    version = rm.create_robot_application_version(application=created["arn"])
    assert version["sources"][0]["etag"] == hashlib.md5(bundle.read_bytes()).hexdigest()
