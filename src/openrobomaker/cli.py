"""`openrobomaker`: serve the API, put files into the object store, export the botocore model, and more."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from openrobomaker.config import ConfigError, Settings, build_settings
from openrobomaker.objectstore import ObjectStoreError


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML/JSON config file")
    parser.add_argument("--data-dir", type=Path, help="directory for the SQLite database and local objects")
    parser.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db")
    parser.add_argument("--s3-endpoint-url", help="use this S3 endpoint instead of the local object store")


def _settings_from(args: argparse.Namespace, **extra) -> Settings:
    return build_settings(
        args.config,
        data_dir=args.data_dir,
        database_url=args.database_url,
        s3_endpoint_url=args.s3_endpoint_url,
        **extra,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from openrobomaker.server import serve

    serve(_settings_from(args, host=args.host, port=args.port))
    return 0


def _parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise ValueError(f"{url!r} is not of the form s3://bucket/key")
    bucket, key = url[5:].split("/", 1)
    if not bucket or not key:
        raise ValueError(f"{url!r} is not of the form s3://bucket/key")
    return bucket, key


def cmd_s3_cp(args: argparse.Namespace) -> int:
    from openrobomaker.objectstore import open_store

    if not args.source.is_file():
        raise FileNotFoundError(f"{args.source}: no such file")
    settings = _settings_from(args)
    store = open_store(settings.resolved_object_store)
    bucket, key = _parse_s3_url(args.destination)
    if key.endswith("/"):
        key += args.source.name
    store.create_bucket(bucket)
    info = store.upload(args.source, bucket, key)
    print(f"upload: {args.source} to s3://{bucket}/{key} (etag {info.etag}, {info.size} bytes)")
    return 0


def cmd_s3_mb(args: argparse.Namespace) -> int:
    from openrobomaker.objectstore import open_store

    bucket = args.bucket.removeprefix("s3://").rstrip("/")
    if not bucket or "/" in bucket:
        raise ValueError(f"{args.bucket!r} is not of the form s3://bucket")
    open_store(_settings_from(args).resolved_object_store).create_bucket(bucket)
    print(f"make_bucket: {bucket}")
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from openrobomaker.api.definitions import load_definitions

    for path in load_definitions().export_botocore_model(args.directory):
        print(path)
    print(
        f"use it with: AWS_DATA_PATH={args.directory.resolve()} python -c \"import boto3; boto3.client('robomaker')\""
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openrobomaker", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the RoboMaker API server and its controllers")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8421)")
    _add_store_options(serve)
    serve.set_defaults(func=cmd_serve)

    s3 = commands.add_parser("s3", help="object store helpers")
    s3_commands = s3.add_subparsers(dest="s3_command", required=True)
    cp = s3_commands.add_parser("cp", help="copy a local file into the configured object store")
    cp.add_argument("source", type=Path)
    cp.add_argument("destination", help="s3://bucket/key (the bucket is created when missing)")
    _add_store_options(cp)
    cp.set_defaults(func=cmd_s3_cp)

    mb = s3_commands.add_parser("mb", help="create a bucket in the configured object store")
    mb.add_argument("bucket", help="s3://bucket")
    _add_store_options(mb)
    mb.set_defaults(func=cmd_s3_mb)

    model = commands.add_parser("model", help="the API model")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    export = model_commands.add_parser("export", help="write a botocore model directory for AWS_DATA_PATH")
    export.add_argument("directory", type=Path)
    export.set_defaults(func=cmd_model_export)

    _add_plugin_commands(commands)
    return parser


def _add_plugin_commands(commands) -> None:
    """Commands of the job and fleet parts: logs, agent, robot-credentials."""
    from openrobomaker.cli_fleet import add_commands as add_fleet_commands
    from openrobomaker.cli_jobs import add_commands as add_job_commands

    add_job_commands(commands, _add_store_options)
    add_fleet_commands(commands, _add_store_options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "httpx", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, ValueError, OSError, ObjectStoreError) as exc:
        print(f"openrobomaker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
