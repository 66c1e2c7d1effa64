"""Option values turned into what the commands use. A value that cannot be used is a usage error: one line on
stderr and exit 2, before anything runs (`fail`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from reelbatch.cli.app import EXIT_USAGE
from reelbatch.cli.render import print_error
from reelbatch.defaults import COMPILE_MODES, OBJECTIVES, CompileMode, Objective

if TYPE_CHECKING:
    from pydantic import ValidationError

    from reelbatch.config import RunConfig
    from reelbatch.planning.cost import StorageKind


def fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(EXIT_USAGE)


def prefect_environment() -> None:
    """Quiet, robust defaults for Prefect's ephemeral mode, set before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def run_defaults(**overrides):
    """RunDefaults from the row default options (RunDefaults field names; None: not given)."""
    from pydantic import ValidationError

    from reelbatch.schemas import ParallelPlan, RunDefaults

    if overrides.get("plan") is not None:
        try:
            overrides["plan"] = ParallelPlan.parse(overrides["plan"])
        except ValueError as exc:
            fail(f"--plan: {exc}")
    try:
        return RunDefaults(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        fail("; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


def limits(entries: list[str] | None) -> dict[str, int]:
    from dataclasses import fields

    from reelbatch.manifest import ManifestLimits

    known = {f.name for f in fields(ManifestLimits)}
    parsed = {}
    for entry in entries or []:
        name, _, value = entry.partition("=")
        if name not in known or not value.isdigit():
            fail(f"--limit {entry!r}: expected NAME=N with NAME one of {', '.join(sorted(known))}")
        parsed[name] = int(value)
    return parsed


def retry_policy(text: str | None) -> dict | None:
    from reelbatch.infra.failures import RetryPolicy

    if text is None:
        return None
    try:
        policy = json.loads(text)
        RetryPolicy.from_dict(policy)
    except (ValueError, TypeError) as exc:
        fail(f"--retry-policy: {exc}")
    return policy


def objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        fail(f"--objective {name!r}: use one of {', '.join(OBJECTIVES)}")
    return name  # an Objective: checked above


def compile_mode(name: str) -> CompileMode:
    if name not in COMPILE_MODES:
        fail(f"--compile {name!r}: use one of {', '.join(COMPILE_MODES)}")
    return name  # a CompileMode: checked above


def storage(name: str) -> StorageKind:
    from reelbatch.planning.cost import STORAGE_KINDS

    if name not in STORAGE_KINDS:
        fail(f"--storage {name!r}: use one of {', '.join(STORAGE_KINDS)}")
    return name  # a StorageKind: checked above


def problems(exc: ValidationError) -> str:
    """A pydantic refusal as one line: each refused field by its dotted name, and why."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def packing(no_pack: bool, job_minutes: float, padding: str, job_width: str):
    from pydantic import ValidationError

    from reelbatch.planning.packing_options import Packing

    try:
        return Packing(enabled=not no_pack, job_minutes=job_minutes, padding=padding, width=job_width)
    except ValidationError as exc:
        fail(f"packing options: {problems(exc)} (--padding pad|fill, --job-width group|node)")


def run_config(**fields) -> RunConfig:
    """The run's configuration from the options (each already checked): a value it still refuses is a usage error."""
    from pydantic import ValidationError

    from reelbatch.config import RunConfig

    try:
        return RunConfig(**fields)
    except ValidationError as exc:
        fail(f"run options: {problems(exc)}")


def gpus(given: int | None) -> int:
    from reelbatch.infra.cluster import default_ranks_per_node

    return given or default_ranks_per_node()


def catalog(model_path: list[str] | None, models_file: str | None):
    from reelbatch.models.catalog import ModelCatalog

    try:
        return ModelCatalog.from_config(model_path or [], models_file)
    except (OSError, ValueError) as exc:
        fail(str(exc))


def absolute(location: str) -> str:
    """Local manifests are recorded by absolute path, so `reelbatch resume` works from any folder."""
    from reelbatch.infra.storage import is_local

    return str(Path(location).resolve()) if is_local(location) else location


def db_url(db: str | None) -> str:
    from reelbatch.defaults import DEFAULT_DB_URL

    return db or os.environ.get("REELBATCH_DB_URL") or DEFAULT_DB_URL


def open_database(db: str | None):
    """The database of --db, refused (exit 2) when its schema is older than this reelbatch."""
    from reelbatch.infra.db import Database, SchemaOutOfDate

    database = Database(db_url(db))
    try:
        database.ensure_schema(auto_upgrade=False)
    except SchemaOutOfDate as exc:
        fail(str(exc))
    return database


def unknown_run(database, run_id: str) -> NoReturn:
    fail(f"no run {run_id!r} in {database.url_for_display} (see `reelbatch runs`)")


def run_summary(database, run_id: str):
    """The summary of a run id or unique prefix of one."""
    try:
        return database.run_summary(run_id)
    except KeyError:
        unknown_run(database, run_id)
