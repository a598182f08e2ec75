"""Server settings: defaults for a laptop, a YAML/JSON config file for everything else, CLI flags on top.

Config file (all keys optional):

    host: 127.0.0.1
    port: 8421
    data_dir: ./data
    database_url: postgresql+psycopg://user:pass@db/openrobomaker
    object_store: {kind: s3, endpoint_url: http://minio:9000, region: us-east-1,
                   access_key_id: ..., secret_access_key: ...}
    credentials:                      # who may call the API, and as which account
      - access_key_id: AKIAEXAMPLE
        secret_access_key: secret
        account_id: "111111111111"
        session_token: optional
    bundle_port: 0                    # agents' bundle downloads (local store, sendfile); 0 = any free port
    limits:
      concurrent_simulation_jobs: 10  # per account (RoboMaker's quota)
      active_simulation_job_batches: 5
      simulation_units: 60            # host capacity of the local executor
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from openrobomaker.objectstore import ObjectStoreConfig

log = logging.getLogger(__name__)

DEV_ACCESS_KEY = "test"
DEV_SECRET_KEY = "test"
DEV_ACCOUNT = "000000000000"
DEFAULT_PORT = 8421


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ConfiguredCredential:
    access_key_id: str
    secret_access_key: str
    account_id: str
    session_token: str | None = None


@dataclass
class Limits:
    concurrent_simulation_jobs: int = 20
    active_simulation_job_batches: int = 5
    simulation_units: int = 60  # four jobs at RoboMaker's default simulationUnitLimit of 15
    application_versions: int = 40
    fleets: int = 20
    concurrent_deployment_jobs: int = 20


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=lambda: Path("./data"))
    database_url: str | None = None
    object_store: ObjectStoreConfig | None = None
    credentials: list[ConfiguredCredential] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    public_url: str | None = None  # how runners and agents reach this server
    isolation: str = "auto"  # simulation job isolation: auto | netns | userns | none
    bundle_port: int = 0  # the agents' sendfile bundle listener; 0 lets the OS choose
    dev_credentials: bool = False

    @property
    def resolved_object_store(self) -> ObjectStoreConfig:
        return self.object_store or ObjectStoreConfig(
            kind="local", root=str((self.data_dir / "objects").resolve())
        )

    @property
    def resolved_database_url(self) -> str:
        from openrobomaker.store.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _credentials_from(data: list[dict[str, Any]]) -> list[ConfiguredCredential]:
    creds = []
    for index, item in enumerate(data):
        try:
            account = str(item["account_id"])
            if not (len(account) == 12 and account.isdigit()):
                raise ConfigError(f"credentials[{index}].account_id must be 12 digits")
            creds.append(
                ConfiguredCredential(
                    access_key_id=str(item["access_key_id"]),
                    secret_access_key=str(item["secret_access_key"]),
                    account_id=account,
                    session_token=item.get("session_token"),
                )
            )
        except KeyError as exc:
            raise ConfigError(f"credentials[{index}] lacks {exc.args[0]}") from exc
    return creds


def build_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    data: dict[str, Any] = load_config_file(config_file) if config_file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings()
    settings.host = str(data.get("host", settings.host))
    settings.port = int(data.get("port", settings.port))
    settings.data_dir = Path(data.get("data_dir", settings.data_dir))
    settings.database_url = data.get("database_url")
    settings.public_url = data.get("public_url")
    settings.isolation = str(data.get("isolation", settings.isolation))
    settings.bundle_port = int(data.get("bundle_port", settings.bundle_port))
    if not 0 <= settings.bundle_port <= 65535:
        raise ConfigError(f"bundle_port must be 0-65535, not {settings.bundle_port}")
    if settings.isolation not in ("auto", "netns", "userns", "none"):
        raise ConfigError(f"isolation must be auto, netns, userns or none, not {settings.isolation!r}")
    store = data.get("object_store")
    if isinstance(store, dict):
        settings.object_store = ObjectStoreConfig.from_dict(store)
    elif data.get("s3_endpoint_url"):
        settings.object_store = ObjectStoreConfig(kind="s3", endpoint_url=data["s3_endpoint_url"])
    settings.credentials = _credentials_from(data.get("credentials") or [])
    for key, value in (data.get("limits") or {}).items():
        if not hasattr(settings.limits, key):
            raise ConfigError(f"unknown limit {key!r}")
        setattr(settings.limits, key, int(value))
    _apply_dev_credentials(settings)
    return settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def _apply_dev_credentials(settings: Settings) -> None:
    if settings.credentials:
        return
    if not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host} without configured credentials: "
            "add a `credentials:` list to the config file (the test/test dev key is only for loopback)"
        )
    settings.dev_credentials = True
    settings.credentials = [ConfiguredCredential(DEV_ACCESS_KEY, DEV_SECRET_KEY, DEV_ACCOUNT)]
