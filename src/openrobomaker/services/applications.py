"""Robot and simulation applications: create, versions, describe, list, update, delete (spec §1).

Both kinds share one set of rules; they differ only in the software suites they carry and their ARN type.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from openrobomaker.objectstore import NoSuchBucket, NoSuchKey, ObjectStoreError
from openrobomaker.services import tags as tag_rules
from openrobomaker.services.arns import build_arn, now_ms, owned_arn
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import (
    InvalidParameter,
    LimitExceeded,
    ResourceAlreadyExists,
    ResourceNotFound,
)
from openrobomaker.services.pagination import decode_token, page, page_size
from openrobomaker.services.registry import operation, taggable
from openrobomaker.store import applications as store
from openrobomaker.store.applications import LATEST

ROBOT_SUITE_VERSIONS = {"ROS": {"Kinetic", "Melodic"}, "ROS2": {"Dashing", "Foxy"}, "General": set()}
SIMULATION_SUITE_VERSIONS = {
    "Gazebo": {"7", "9", "11"},
    "RosbagPlay": {"Kinetic", "Melodic", "Dashing", "Foxy"},
    "SimulationRuntime": set(),
}
DEFAULT_PAGE = 100


@dataclass(frozen=True)
class Kind:
    name: str  # "robot" | "simulation"
    arn_type: str
    summaries_key: str

    @property
    def is_simulation(self) -> bool:
        return self.name == "simulation"


ROBOT = Kind("robot", "robot-application", "robotApplicationSummaries")
SIMULATION = Kind("simulation", "simulation-application", "simulationApplicationSummaries")


# --- rules -----------------------------------------------------------------------------------------


def _check_suite(field: str, suite: dict | None, versions_by_name: dict[str, set[str]]) -> dict | None:
    if suite is None:
        return None
    name, version = suite.get("name"), suite.get("version")
    if name is None:
        raise InvalidParameter(f"{field}.name: a software suite name is required")
    allowed = versions_by_name[name]
    if not allowed:
        if version:
            raise InvalidParameter(f"{field}.version: {name} takes no version")
        return {"name": name}
    if version is None:
        raise InvalidParameter(f"{field}.version: {name} needs a version ({', '.join(sorted(allowed))})")
    if version not in allowed:
        raise InvalidParameter(
            f"{field}.version: {version!r} is not a version of {name} ({', '.join(sorted(allowed))})"
        )
    return {"name": name, "version": version}


def _check_rendering_engine(engine: dict | None) -> dict | None:
    if engine is None:
        return None
    if not engine.get("name") or not engine.get("version"):
        raise InvalidParameter("renderingEngine: name and version are both required")
    return {"name": engine["name"], "version": engine["version"]}


def _check_sources_or_environment(params: dict[str, Any]) -> None:
    sources, environment = params.get("sources"), params.get("environment")
    if sources and environment:
        raise InvalidParameter("sources, environment: give either S3 sources or a container image, not both")
    if not sources and not environment:
        raise InvalidParameter("sources: at least one source (or an environment image) is required")
    if sources:
        architectures = [s["architecture"] for s in sources]
        if len(set(architectures)) != len(architectures):
            raise InvalidParameter("sources: at most one source per architecture")
    if environment and not environment.get("uri"):
        raise InvalidParameter("environment.uri: an image URI is required")


def _resolve_sources(platform: Any, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each source must exist in the object store now; the version records the ETag it has now."""
    resolved = []
    for index, source in enumerate(sources, start=1):
        field = f"sources.{index}.member"
        try:
            info = platform.objects.head(source["s3Bucket"], source["s3Key"])
        except NoSuchBucket as exc:
            raise InvalidParameter(f"{field}.s3Bucket: bucket {source['s3Bucket']!r} does not exist") from exc
        except NoSuchKey as exc:
            raise InvalidParameter(
                f"{field}.s3Key: s3://{source['s3Bucket']}/{source['s3Key']} does not exist"
            ) from exc
        except ObjectStoreError as exc:
            raise InvalidParameter(
                f"{field}: cannot read s3://{source['s3Bucket']}/{source['s3Key']}: {exc}"
            ) from exc
        resolved.append(
            {
                "s3Bucket": source["s3Bucket"],
                "s3Key": source["s3Key"],
                "etag": info.etag,
                "architecture": source["architecture"],
                # not part of the API's Source: for robot agents, which verify the bytes with it
                **({"sha256": info.sha256} if info.sha256 else {}),
            }
        )
    return resolved


def _spec_from_request(platform: Any, kind: Kind, params: dict[str, Any]) -> dict[str, Any]:
    _check_sources_or_environment(params)
    spec: dict[str, Any] = {
        "robotSoftwareSuite": _check_suite(
            "robotSoftwareSuite", params["robotSoftwareSuite"], ROBOT_SUITE_VERSIONS
        )
    }
    if kind.is_simulation:
        spec["simulationSoftwareSuite"] = _check_suite(
            "simulationSoftwareSuite", params["simulationSoftwareSuite"], SIMULATION_SUITE_VERSIONS
        )
        spec["renderingEngine"] = _check_rendering_engine(params.get("renderingEngine"))
    if params.get("sources"):
        spec["sources"] = _resolve_sources(platform, params["sources"])
    else:
        spec["environment"] = {"uri": params["environment"]["uri"]}
    return {k: v for k, v in spec.items() if v is not None}


def _find_application(
    session,
    ctx: RequestContext,
    kind: Kind,
    arn: str,
    field: str = "application",
    *,
    for_update: bool = False,
):
    owned_arn(ctx, arn, kind.arn_type, field)
    row = store.application_by_arn(session, arn, for_update=for_update)
    if row is None:
        raise ResourceNotFound(f"{field}: {kind.arn_type} {arn} not found")
    return row


def _find_version(session, app_row, version: str, field: str = "applicationVersion"):
    row = store.find_version(session, app_row.id, version)
    if row is None:
        raise ResourceNotFound(f"{field}: version {version} of {app_row.arn} not found")
    return row


def _check_revision(current: str | None, latest_row) -> None:
    # RoboMaker documents currentRevisionId as an optimistic lock; a stale one must not win (spec §1.3).
    if current is not None and current != latest_row.revision_id:
        raise InvalidParameter(
            f"currentRevisionId: {current!r} is not the current revision ({latest_row.revision_id}) of $LATEST"
        )


# --- views -----------------------------------------------------------------------------------------


_SOURCE_FIELDS = frozenset({"s3Bucket", "s3Key", "etag", "architecture"})  # the API's Source shape


def _view(app_row, version_row, *, with_etags: bool) -> dict[str, Any]:
    spec = version_row.spec
    view: dict[str, Any] = {
        "arn": app_row.arn,
        "name": app_row.name,
        "version": version_row.version,
        "robotSoftwareSuite": spec["robotSoftwareSuite"],
        "lastUpdatedAt": version_row.last_updated_at,
        "revisionId": version_row.revision_id,
    }
    if "sources" in spec:
        # $LATEST resolves at use time, so RoboMaker showed no etag there; versions carry the one they pinned.
        shown = _SOURCE_FIELDS if with_etags else _SOURCE_FIELDS - {"etag"}
        view["sources"] = [{k: v for k, v in s.items() if k in shown} for s in spec["sources"]]
    for key in ("simulationSoftwareSuite", "renderingEngine", "environment"):
        if key in spec:
            view[key] = spec[key]
    return view


def _summary(kind: Kind, app_row, version_row) -> dict[str, Any]:
    summary = {
        "name": app_row.name,
        "arn": app_row.arn,
        "version": version_row.version,
        "lastUpdatedAt": version_row.last_updated_at,
        "robotSoftwareSuite": version_row.spec["robotSoftwareSuite"],
    }
    if kind.is_simulation:
        summary["simulationSoftwareSuite"] = version_row.spec["simulationSoftwareSuite"]
    return summary


# --- operations ------------------------------------------------------------------------------------


def create_application(
    platform: Any, ctx: RequestContext, kind: Kind, params: dict[str, Any]
) -> dict[str, Any]:
    spec = _spec_from_request(platform, kind, params)
    tags = tag_rules.checked_tags(params.get("tags") or {})
    created = now_ms()
    arn = build_arn(ctx, kind.arn_type, params["name"], str(created))
    try:
        with platform.db.transaction() as session:
            if store.find_application(session, ctx.account_id, ctx.region, kind.name, params["name"]):
                raise ResourceAlreadyExists(
                    f"name: a {kind.arn_type} named {params['name']!r} already exists"
                )
            app_row = store.ApplicationRow(
                account_id=ctx.account_id,
                region=ctx.region,
                kind=kind.name,
                name=params["name"],
                arn=arn,
                created_ms=created,
                last_version_number=0,
            )
            session.add(app_row)
            session.flush()
            latest = store.ApplicationVersionRow(
                application_id=app_row.id,
                version=LATEST,
                version_number=None,
                revision_id=str(uuid.uuid4()),
                last_updated_at=created / 1000,
                spec=spec,
            )
            session.add(latest)
            tag_rules.store_tags(session, arn, tags)
    except IntegrityError as exc:
        # Two creates raced past the existence check; the unique constraint decided.
        raise ResourceAlreadyExists(
            f"name: a {kind.arn_type} named {params['name']!r} already exists"
        ) from exc
    return {**_view(app_row, latest, with_etags=False), "tags": tags}


def create_application_version(
    platform: Any, ctx: RequestContext, kind: Kind, params: dict[str, Any]
) -> dict[str, Any]:
    with platform.db.read() as session:
        app_row = _find_application(session, ctx, kind, params["application"])
        latest = _find_version(session, app_row, LATEST)
        _check_revision(params.get("currentRevisionId"), latest)
    spec = dict(latest.spec)
    if "sources" in spec:
        spec["sources"] = _resolve_sources(platform, spec["sources"])
        _check_expected_etags(params.get("s3Etags"), spec["sources"])
    if params.get("imageDigest"):
        spec["imageDigest"] = params["imageDigest"]
    with platform.db.transaction() as session:
        app_row = _find_application(session, ctx, kind, params["application"], for_update=True)
        latest = _find_version(session, app_row, LATEST)
        _check_revision(params.get("currentRevisionId"), latest)
        if (
            store.count_numbered_versions(session, app_row.id)
            >= platform.settings.limits.application_versions
        ):
            raise LimitExceeded(
                f"application: {app_row.arn} already has {platform.settings.limits.application_versions} versions"
            )
        app_row.last_version_number += 1
        version_row = store.ApplicationVersionRow(
            application_id=app_row.id,
            version=str(app_row.last_version_number),
            version_number=app_row.last_version_number,
            revision_id=str(uuid.uuid4()),
            last_updated_at=time.time(),
            spec=spec,
        )
        session.add(version_row)
    view = _view(app_row, version_row, with_etags=True)
    if "imageDigest" in spec:
        view["imageDigest"] = spec["imageDigest"]
    return view


def _check_expected_etags(expected: list[str] | None, sources: list[dict[str, Any]]) -> None:
    if not expected:
        return
    actual = [s["etag"] for s in sources]
    if [e.strip('"') for e in expected] != actual:
        raise InvalidParameter(
            f"s3Etags: {expected} do not match the current ETags of the sources {actual}; "
            "the bundle changed since you looked"
        )


def describe_application(
    platform: Any, ctx: RequestContext, kind: Kind, params: dict[str, Any]
) -> dict[str, Any]:
    version = params.get("applicationVersion") or LATEST
    arn = params["application"]
    owned_arn(ctx, arn, kind.arn_type, "application")
    with platform.db.reader() as connection:
        row = store.describe_row(connection, arn, version)
        if row is None or row.kind != kind.name:
            identity = store.application_identity(connection, arn)
            if identity is None or identity.kind != kind.name:
                raise ResourceNotFound(f"application: {kind.arn_type} {arn} not found")
            raise ResourceNotFound(f"applicationVersion: version {version} of {arn} not found")
        tags = tag_rules.load_tags(connection, arn)
    view = _view(row, row, with_etags=version != LATEST)
    if "imageDigest" in row.spec:
        view["imageDigest"] = row.spec["imageDigest"]
    return {**view, "tags": tags}


def list_applications(
    platform: Any, ctx: RequestContext, kind: Kind, params: dict[str, Any]
) -> dict[str, Any]:
    name = None
    for index, flt in enumerate(params.get("filters") or [], start=1):
        if flt.get("name") != "name":
            raise InvalidParameter(f"filters.{index}.member.name: only the filter 'name' is supported")
        name = (flt.get("values") or [None])[0]
    limit = page_size(params, DEFAULT_PAGE)
    scope = f"{kind.name}:{name}:{params.get('versionQualifier')}"
    offset = decode_token(params.get("nextToken"), scope)
    with platform.db.reader() as session:
        rows = store.list_versions(
            session,
            ctx.account_id,
            ctx.region,
            kind.name,
            name=name,
            all_versions=params.get("versionQualifier") == "ALL",
            offset=offset,
            limit=limit + 1,
        )
    rows, token = page(rows, offset, limit, scope)
    result: dict[str, Any] = {kind.summaries_key: [_summary(kind, row, row) for row in rows]}
    if token:
        result["nextToken"] = token
    return result


def update_application(
    platform: Any, ctx: RequestContext, kind: Kind, params: dict[str, Any]
) -> dict[str, Any]:
    spec = _spec_from_request(platform, kind, params)
    with platform.db.transaction() as session:
        app_row = _find_application(session, ctx, kind, params["application"], for_update=True)
        latest = _find_version(session, app_row, LATEST)
        _check_revision(params.get("currentRevisionId"), latest)
        latest.spec = spec
        latest.revision_id = str(uuid.uuid4())
        latest.last_updated_at = time.time()
    return _view(app_row, latest, with_etags=False)


def delete_application(platform: Any, ctx: RequestContext, kind: Kind, params: dict[str, Any]) -> None:
    version = params.get("applicationVersion")
    if version == LATEST:
        raise InvalidParameter(
            "applicationVersion: $LATEST cannot be deleted on its own; delete the application"
        )
    with platform.db.transaction() as session:
        app_row = _find_application(session, ctx, kind, params["application"], for_update=True)
        if version is None:
            tag_rules.drop_tags(session, app_row.arn)
            store.delete_application(session, app_row)
        else:
            session.delete(_find_version(session, app_row, version))


def application_exists(platform: Any, ctx: RequestContext, kind: Kind, arn: str) -> bool:
    with platform.db.read() as session:
        row = store.application_by_arn(session, arn)
        return row is not None and row.account_id == ctx.account_id and row.region == ctx.region


def resolve_for_use(
    platform: Any,
    ctx: RequestContext,
    kind: Kind,
    arn: str,
    version: str,
    field: str,
    *,
    cache: dict[tuple[str, str], Any] | None = None,
) -> dict[str, Any]:
    """An application version as a job or deployment will run it: name, arn, version and its spec.

    `cache` is one controller pass's memo: each (arn, version) is read from the store once per pass, not
    once per job naming it (a batch's members usually all name the same applications). Ownership and the
    caller's own error messages are still checked per call. The spec is shared by the callers of a pass:
    read it, do not change it."""
    owned_arn(ctx, arn, kind.arn_type, field)
    key = (arn, version)
    found = cache.get(key, _UNREAD) if cache is not None else _UNREAD
    if found is _UNREAD:
        found = _read_for_use(platform, arn, version)
        if cache is not None:
            cache[key] = found
    if found is None or (found is not _NO_VERSION and found.kind != kind.name):
        raise ResourceNotFound(f"{field}: {kind.arn_type} {arn} not found")
    if found is _NO_VERSION:
        raise ResourceNotFound(f"{field}: version {version} of {arn} not found")
    return {"name": found.name, "arn": found.arn, "version": version, "spec": dict(found.spec)}


_UNREAD = object()
_NO_VERSION = object()  # the application exists, the version does not


def _read_for_use(platform: Any, arn: str, version: str) -> Any:
    """The version's row (one prepared statement), None if no such application, or _NO_VERSION."""
    with platform.db.reader() as connection:
        row = store.describe_row(connection, arn, version)
        if row is not None:
            return row
        return _NO_VERSION if store.application_identity(connection, arn) is not None else None


# --- registration: the two kinds share the rules above -----------------------------------------------


def _register(kind: Kind, singular: str) -> None:
    operation(f"Create{singular}")(lambda p, c, params: create_application(p, c, kind, params))
    operation(f"Create{singular}Version")(lambda p, c, params: create_application_version(p, c, kind, params))
    operation(f"Describe{singular}")(lambda p, c, params: describe_application(p, c, kind, params))
    operation(f"List{singular}s")(lambda p, c, params: list_applications(p, c, kind, params))
    operation(f"Update{singular}")(lambda p, c, params: update_application(p, c, kind, params))
    operation(f"Delete{singular}")(lambda p, c, params: delete_application(p, c, kind, params))
    taggable(kind.arn_type)(lambda p, c, arn: application_exists(p, c, kind, arn))


_register(ROBOT, "RobotApplication")
_register(SIMULATION, "SimulationApplication")
