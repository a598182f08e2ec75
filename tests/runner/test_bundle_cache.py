"""A run's bundle comes from the host's cache of extracted bundles when an earlier run extracted the same
object: every run still gets its own writable tree, a changed object is fetched again, a bad one is not kept."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path

import pytest

from openrobomaker.objectstore import ObjectStoreConfig, open_store
from openrobomaker.runner.failures import JobFailure
from openrobomaker.runner.fetch import fetch_application
from openrobomaker.runner.spec import ApplicationSpec, LaunchConfig, SoftwareSuite, SourceObject


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class CountingStore:
    """The local store, counting the downloads that reach it (a cache hit makes none)."""

    def __init__(self, root: Path):
        self.inner = open_store(ObjectStoreConfig(kind="local", root=str(root)))
        self.inner.create_bucket("apps")
        self.downloads = 0
        self.replace_on_download: bytes | None = None

    def head(self, bucket, key):
        return self.inner.head(bucket, key)

    def download(self, bucket, key, dest):
        self.downloads += 1
        if self.replace_on_download is not None:  # someone uploads a new bundle between HEAD and GET
            self.inner.put_bytes(bucket, key, self.replace_on_download)
            self.replace_on_download = None
        return self.inner.download(bucket, key, dest)


def app_spec(etag: str | None = None, version: str = "$LATEST") -> ApplicationSpec:
    return ApplicationSpec(
        kind="simulation",
        name="sim",
        arn="arn:aws:robomaker:us-west-2:000000000000:simulation-application/sim/1",
        version=version,
        software_suite=SoftwareSuite(name="General", version=None),
        sources=[SourceObject("apps", "sim.tar.gz", etag)],
        launch_config=LaunchConfig(command=["true"]),
    )


@pytest.fixture
def store(tmp_path) -> CountingStore:
    return CountingStore(tmp_path / "objects")


def fetch(store, tmp_path: Path, run: str, app: ApplicationSpec | None = None):
    run_dir = tmp_path / "runs" / run
    run_dir.mkdir(parents=True)
    dest = run_dir / "bundle-simulation-1"
    return fetch_application(
        store, app or app_spec(), run_dir / "sim.bundle.download", dest, tmp_path / "cache"
    ), dest


def test_second_run_copies_the_extracted_bundle_without_downloading(store, tmp_path):
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b"export A=1\n", "bin/tool": b"v1"}))
    first, first_dir = fetch(store, tmp_path, "one")
    second, second_dir = fetch(store, tmp_path, "two")
    assert store.downloads == 1
    assert second.format == first.format == "plain"
    assert second.setup_scripts == [second_dir / "setup.sh"]
    assert second.ros_package_roots == [second_dir]
    assert (second_dir / "bin" / "tool").read_bytes() == b"v1"
    assert (second_dir / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert not (tmp_path / "runs" / "one" / "sim.bundle.download").exists()


def test_each_run_gets_its_own_writable_tree(store, tmp_path):
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b"", "config.yaml": b"speed: 1\n"}))
    _, first_dir = fetch(store, tmp_path, "one")
    (first_dir / "config.yaml").write_bytes(b"speed: 99\n")  # a job rewriting a file of its bundle
    (first_dir / "setup.sh").unlink()
    _, second_dir = fetch(store, tmp_path, "two")
    assert (second_dir / "config.yaml").read_bytes() == b"speed: 1\n"
    assert (second_dir / "setup.sh").exists()


def test_a_replaced_bundle_is_fetched_again(store, tmp_path):
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b"", "v": b"1"}))
    fetch(store, tmp_path, "one")
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b"", "v": b"2"}))
    _, second_dir = fetch(store, tmp_path, "two")
    assert store.downloads == 2
    assert (second_dir / "v").read_bytes() == b"2"


def test_a_pinned_version_whose_object_changed_fails_even_when_cached(store, tmp_path):
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b""}))
    pinned = store.head("apps", "sim.tar.gz").etag
    fetch(store, tmp_path, "one", app_spec(pinned, version="1"))
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b"", "new": b""}))
    with pytest.raises(JobFailure) as failure:
        fetch(store, tmp_path, "two", app_spec(pinned, version="1"))
    assert failure.value.code == "SimulationApplicationVersionMismatchedEtag"


def test_latest_replaced_between_head_and_download_is_fetched_again(store, tmp_path):
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b"", "v": b"old"}))
    store.replace_on_download = tar_gz({"setup.sh": b"", "v": b"new"})
    _, dest = fetch(store, tmp_path, "one")
    assert (dest / "v").read_bytes() == b"new"
    assert store.downloads == 2
    _, again = fetch(store, tmp_path, "two")  # and the cache holds the new bytes under the new ETag
    assert (again / "v").read_bytes() == b"new" and store.downloads == 2


def test_a_bad_bundle_fails_every_run_and_leaves_nothing_in_the_cache(store, tmp_path):
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"../escape.sh": b"echo pwned"}))
    for run in ("one", "two"):
        with pytest.raises(JobFailure) as failure:
            fetch(store, tmp_path, run)
        assert "InvalidBundle" in failure.value.code
    assert store.downloads == 2
    assert [p.name for p in (tmp_path / "cache" / "trees").iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_runs_extract_a_bundle_once(store, tmp_path):
    store.inner.put_bytes("apps", "sim.tar.gz", tar_gz({"setup.sh": b"", "data": b"x" * 100_000}))
    errors: list[BaseException] = []

    def one(run: str) -> None:
        try:
            _, dest = fetch(store, tmp_path, run)
            assert (dest / "data").stat().st_size == 100_000
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(f"run{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.downloads == 1


def test_another_object_with_the_same_etag_is_extracted_from_its_own_bytes(store, tmp_path):
    """A tree is served for the object it came from only: an ETag is an MD5, and colliding MD5s can be made,
    so an object elsewhere that claims the same ETag must not get (or poison) another object's tree."""
    bundle = tar_gz({"setup.sh": b"", "v": b"same"})
    store.inner.put_bytes("apps", "sim.tar.gz", bundle)
    store.inner.put_bytes("apps", "copy.tar.gz", bundle)
    assert store.head("apps", "sim.tar.gz").etag == store.head("apps", "copy.tar.gz").etag
    fetch(store, tmp_path, "one")
    copy = app_spec()
    copy.sources[0] = SourceObject("apps", "copy.tar.gz", None)
    _, dest = fetch(store, tmp_path, "two", copy)
    assert store.downloads == 2
    assert (dest / "v").read_bytes() == b"same"
