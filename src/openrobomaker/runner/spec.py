"""The runner's input: one simulation job run, as the control plane's executor writes it (JSON, camelCase).

This is a fixed contract between the control plane and the runner; unknown keys are ignored so that a
newer control plane can add fields without breaking an older runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from openrobomaker.objectstore import ObjectStoreConfig

FAILURE_BEHAVIORS = ("Fail", "Continue")
ISOLATION_MODES = ("auto", "netns", "userns", "none")
APPLICATION_KINDS = ("simulation", "robot")
DATA_SOURCE_TYPES = ("File", "Prefix", "Archive")
LATEST_VERSION = "$LATEST"


class SpecError(ValueError):
    """The spec file is not a valid runner spec."""


def _require(data: dict, key: str, where: str) -> Any:
    if key not in data or data[key] is None:
        raise SpecError(f"{where}: missing {key!r}")
    return data[key]


def _one_of(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _drop_none(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class ControlPlaneEndpoint:
    url: str
    token: str

    @classmethod
    def from_dict(cls, data: dict) -> ControlPlaneEndpoint:
        return cls(
            url=str(_require(data, "url", "controlPlane")), token=str(_require(data, "token", "controlPlane"))
        )

    def to_dict(self) -> dict:
        return {"url": self.url, "token": self.token}


@dataclass(frozen=True)
class ApiEndpoint:
    """Where apps inside the job reach the RoboMaker API, and the credentials they use there."""

    url: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ApiEndpoint:
        return cls(
            url=str(_require(data, "url", "apiEndpoint")),
            access_key_id=str(_require(data, "accessKeyId", "apiEndpoint")),
            secret_access_key=str(_require(data, "secretAccessKey", "apiEndpoint")),
            session_token=data.get("sessionToken"),
        )

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "accessKeyId": self.access_key_id,
            "secretAccessKey": self.secret_access_key,
            "sessionToken": self.session_token,
        }


@dataclass(frozen=True)
class SoftwareSuite:
    name: str
    version: str | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> SoftwareSuite:
        data = data or {}
        return cls(name=str(data.get("name") or "ROS"), version=data.get("version"))

    def to_dict(self) -> dict:
        return _drop_none({"name": self.name, "version": self.version})


@dataclass(frozen=True)
class SourceObject:
    s3_bucket: str
    s3_key: str
    etag: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> SourceObject:
        return cls(
            s3_bucket=str(_require(data, "s3Bucket", "source")),
            s3_key=str(_require(data, "s3Key", "source")),
            etag=data.get("etag"),
        )

    def to_dict(self) -> dict:
        return {"s3Bucket": self.s3_bucket, "s3Key": self.s3_key, "etag": self.etag}


@dataclass(frozen=True)
class LaunchConfig:
    package_name: str | None = None
    launch_file: str | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    port_forwarding_config: dict | None = None
    stream_ui: bool = False
    command: list[str] | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> LaunchConfig:
        data = data or {}
        env = data.get("environmentVariables") or {}
        if not isinstance(env, dict):
            raise SpecError("launchConfig.environmentVariables must be an object")
        command = data.get("command")
        if command is not None and (
            not isinstance(command, list) or not all(isinstance(c, str) for c in command)
        ):
            raise SpecError("launchConfig.command must be a list of strings")
        return cls(
            package_name=data.get("packageName"),
            launch_file=data.get("launchFile"),
            environment_variables={str(k): str(v) for k, v in env.items()},
            port_forwarding_config=data.get("portForwardingConfig"),
            stream_ui=bool(data.get("streamUI", False)),
            command=list(command) if command else None,
        )

    def to_dict(self) -> dict:
        return _drop_none(
            {
                "packageName": self.package_name,
                "launchFile": self.launch_file,
                "environmentVariables": dict(self.environment_variables),
                "portForwardingConfig": self.port_forwarding_config,
                "streamUI": self.stream_ui,
                "command": list(self.command) if self.command else None,
            }
        )


@dataclass(frozen=True)
class ApplicationSpec:
    kind: str  # "simulation" | "robot"
    name: str
    arn: str
    version: str
    software_suite: SoftwareSuite
    sources: list[SourceObject]
    launch_config: LaunchConfig

    @property
    def is_simulation(self) -> bool:
        return self.kind == "simulation"

    @property
    def is_numbered_version(self) -> bool:
        return self.version != LATEST_VERSION

    @classmethod
    def from_dict(cls, data: dict) -> ApplicationSpec:
        where = f"application {data.get('name')!r}"
        return cls(
            kind=_one_of(str(_require(data, "kind", where)), APPLICATION_KINDS, where),
            name=str(_require(data, "name", where)),
            arn=str(data.get("arn") or ""),
            version=str(data.get("version") or LATEST_VERSION),
            software_suite=SoftwareSuite.from_dict(data.get("softwareSuite")),
            sources=[SourceObject.from_dict(s) for s in data.get("sources") or []],
            launch_config=LaunchConfig.from_dict(data.get("launchConfig")),
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "arn": self.arn,
            "version": self.version,
            "softwareSuite": self.software_suite.to_dict(),
            "sources": [s.to_dict() for s in self.sources],
            "launchConfig": self.launch_config.to_dict(),
        }


@dataclass(frozen=True)
class S3KeyEtag:
    s3_key: str
    etag: str | None = None

    @classmethod
    def from_dict(cls, data: dict | str) -> S3KeyEtag:
        if isinstance(data, str):
            return cls(s3_key=data)
        return cls(s3_key=str(_require(data, "s3Key", "dataSource.s3Keys")), etag=data.get("etag"))

    def to_dict(self) -> dict:
        return {"s3Key": self.s3_key, "etag": self.etag}


@dataclass(frozen=True)
class DataSourceSpec:
    name: str
    s3_bucket: str
    s3_keys: list[S3KeyEtag]
    type: str = "File"
    destination: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> DataSourceSpec:
        where = f"dataSource {data.get('name')!r}"
        return cls(
            name=str(_require(data, "name", where)),
            s3_bucket=str(_require(data, "s3Bucket", where)),
            s3_keys=[S3KeyEtag.from_dict(k) for k in _require(data, "s3Keys", where)],
            type=_one_of(str(data.get("type") or "File"), DATA_SOURCE_TYPES, where),
            destination=data.get("destination"),
        )

    def to_dict(self) -> dict:
        return _drop_none(
            {
                "name": self.name,
                "s3Bucket": self.s3_bucket,
                "s3Keys": [k.to_dict() for k in self.s3_keys],
                "type": self.type,
                "destination": self.destination,
            }
        )


@dataclass(frozen=True)
class OutputLocation:
    s3_bucket: str
    s3_prefix: str = ""

    @classmethod
    def from_dict(cls, data: dict | None) -> OutputLocation | None:
        if not data:
            return None
        return cls(
            s3_bucket=str(_require(data, "s3Bucket", "outputLocation")),
            s3_prefix=str(data.get("s3Prefix") or ""),
        )

    def to_dict(self) -> dict:
        return {"s3Bucket": self.s3_bucket, "s3Prefix": self.s3_prefix}


@dataclass(frozen=True)
class RunnerSpec:
    job_id: str
    job_arn: str
    run_id: str
    account: str
    region: str
    work_dir: str
    cache_dir: str
    object_store: ObjectStoreConfig
    control_plane: ControlPlaneEndpoint
    api_endpoint: ApiEndpoint
    max_job_duration_seconds: int
    failure_behavior: str = "Fail"
    applications: list[ApplicationSpec] = field(default_factory=list)
    data_sources: list[DataSourceSpec] = field(default_factory=list)
    output_location: OutputLocation | None = None
    record_all_ros_topics: bool = False
    isolation: str = "auto"
    restart_count: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> RunnerSpec:
        if not isinstance(data, dict):
            raise SpecError("the spec must be a JSON object")
        duration = int(_require(data, "maxJobDurationInSeconds", "spec"))
        if duration <= 0:
            raise SpecError("spec: maxJobDurationInSeconds must be positive")
        return cls(
            job_id=str(_require(data, "jobId", "spec")),
            job_arn=str(_require(data, "jobArn", "spec")),
            run_id=str(_require(data, "runId", "spec")),
            account=str(_require(data, "account", "spec")),
            region=str(_require(data, "region", "spec")),
            work_dir=str(_require(data, "workDir", "spec")),
            cache_dir=str(_require(data, "cacheDir", "spec")),
            object_store=ObjectStoreConfig.from_dict(_require(data, "objectStore", "spec")),
            control_plane=ControlPlaneEndpoint.from_dict(_require(data, "controlPlane", "spec")),
            api_endpoint=ApiEndpoint.from_dict(_require(data, "apiEndpoint", "spec")),
            max_job_duration_seconds=duration,
            failure_behavior=_one_of(str(data.get("failureBehavior") or "Fail"), FAILURE_BEHAVIORS, "spec"),
            applications=[ApplicationSpec.from_dict(a) for a in data.get("applications") or []],
            data_sources=[DataSourceSpec.from_dict(d) for d in data.get("dataSources") or []],
            output_location=OutputLocation.from_dict(data.get("outputLocation")),
            record_all_ros_topics=bool(data.get("recordAllRosTopics", False)),
            isolation=_one_of(str(data.get("isolation") or "auto"), ISOLATION_MODES, "spec"),
            restart_count=int(data.get("restartCount") or 0),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RunnerSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"the spec is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SpecError):
                raise
            raise SpecError(f"invalid spec: {exc}") from exc

    def to_dict(self) -> dict:
        return {
            "jobId": self.job_id,
            "jobArn": self.job_arn,
            "runId": self.run_id,
            "account": self.account,
            "region": self.region,
            "workDir": self.work_dir,
            "cacheDir": self.cache_dir,
            "objectStore": self.object_store.to_dict(),
            "controlPlane": self.control_plane.to_dict(),
            "apiEndpoint": self.api_endpoint.to_dict(),
            "maxJobDurationInSeconds": self.max_job_duration_seconds,
            "failureBehavior": self.failure_behavior,
            "applications": [a.to_dict() for a in self.applications],
            "dataSources": [d.to_dict() for d in self.data_sources],
            "outputLocation": self.output_location.to_dict() if self.output_location else None,
            "recordAllRosTopics": self.record_all_ros_topics,
            "isolation": self.isolation,
            "restartCount": self.restart_count,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)
