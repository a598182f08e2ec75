"""The local object store's recorded digests: the ETag (MD5, as S3 gives for a single-part upload) and the
SHA-256 robot agents verify bundles with, both computed once per version of an object."""

from __future__ import annotations

import hashlib
import os

from openrobomaker.objectstore import ObjectStoreConfig, open_store


def test_head_reports_the_md5_etag_and_sha256_recorded_at_upload(tmp_path):
    store = open_store(ObjectStoreConfig(kind="local", root=str(tmp_path)))
    store.create_bucket("b")
    data = os.urandom(3 * 1024 * 1024 + 5)
    put = store.put_bytes("b", "dir/obj", data)
    head = store.head("b", "dir/obj")
    assert put == head
    assert head.etag == hashlib.md5(data).hexdigest() and head.sha256 == hashlib.sha256(data).hexdigest()
    assert head.size == len(data)

    # replaced (as every write does: a new file renamed over it): both digests follow
    replacement = tmp_path / "new"
    replacement.write_bytes(b"second version")
    store.upload(replacement, "b", "dir/obj")
    again = store.head("b", "dir/obj")
    assert again.etag == hashlib.md5(b"second version").hexdigest()
    assert again.sha256 == hashlib.sha256(b"second version").hexdigest()


def test_a_file_changed_behind_the_stores_back_is_hashed_again(tmp_path):
    store = open_store(ObjectStoreConfig(kind="local", root=str(tmp_path)))
    store.create_bucket("b")
    store.put_bytes("b", "obj", b"one")
    path = store.local_path("b", "obj")
    path.write_bytes(b"three")  # another size (and mtime): the record no longer applies
    assert store.head("b", "obj").sha256 == hashlib.sha256(b"three").hexdigest()


def test_a_record_from_before_sha256_is_completed_on_the_next_head(tmp_path):
    store = open_store(ObjectStoreConfig(kind="local", root=str(tmp_path)))
    store.create_bucket("b")
    store.put_bytes("b", "obj", b"payload")
    (record,) = (tmp_path / "b" / ".openrobomaker-etags").glob("*.etag")
    etag, mtime_ns, size, _ = record.read_text().split()
    record.write_text(f"{etag} {mtime_ns} {size}")  # the three-field format older servers wrote
    head = store.head("b", "obj")
    assert head.etag == etag and head.sha256 == hashlib.sha256(b"payload").hexdigest()
    assert len(record.read_text().split()) == 4
