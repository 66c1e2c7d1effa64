"""Shared test set-up: an isolated environment, the tiny models, and database URLs for both backends."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Before anything imports Prefect: a private Prefect home and quiet, patient ephemeral mode.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="reelbatch-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("REELBATCH_CACHE_DIR", str(_SESSION_HOME / "cache"))
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get("REELBATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent

# Hypothesis budgets. `ci`, the default, keeps `make test` fast; `nightly` (`make test-nightly`, or
# HYPOTHESIS_PROFILE=nightly) draws twenty times as many examples. Tests leave max_examples to the profile, or
# pass a count of their own through tests.hypothesis_budget.scaled (the `ci` figure: what it takes to reach the
# cases the property is about), which the nightly profile multiplies.
hypothesis_settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True)
hypothesis_settings.register_profile("nightly", max_examples=2000, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))  # --hypothesis-profile overrides


def pytest_collection_finish(session: pytest.Session) -> None:
    """One torch thread in the test process unless OMP_NUM_THREADS says otherwise.

    The tiny models are too small to gain from threads, and on a shared two-core machine OpenMP threads spin
    against the other processes: the parity and engine tests ran twice as fast on one thread under load. Set here,
    not through the environment, so torchrun ranks and CLI subprocesses still get what the launcher gives them.
    """
    torch = sys.modules.get("torch")  # imported by the collected modules that need it
    if torch is not None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the loopback S3 server is a `server` test (out of `make test-fast`) whichever fixture brings it."""
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """The built-in tiny pipelines, built once per test session."""
    from reelbatch.models.tiny import TINY_BUILDERS, ensure_tiny_model

    return {name: ensure_tiny_model(name) for name in TINY_BUILDERS}


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL server; fails under CI when there is none, skips otherwise."""
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except Exception as error:  # noqa: BLE001 - any connection failure means "no server"
        reason = f"PostgreSQL not reachable at {make_url(POSTGRES_ADMIN_URL).render_as_string()}: {error}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_database_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the server, dropped after the test."""
    name = f"reelbatch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'reelbatch.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def database(database_url: str):
    """An upgraded, empty database on each backend."""
    from reelbatch.infra.db import Database

    with Database(database_url) as database:
        database.upgrade()
        yield database


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API server (moto's server mode) on loopback; the AWS variables point every client at it.

    The variables are process-wide so subprocesses (the CLI, torchrun ranks) reach the same server.
    """
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fake = {
        "AWS_ACCESS_KEY_ID": "reelbatch-test-key",
        "AWS_SECRET_ACCESS_KEY": "reelbatch-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    previous = {key: os.environ.get(key) for key in fake}
    os.environ.update(fake)
    # fsspec caches filesystems by their arguments, not the environment: one an earlier test made without these
    # variables (no credentials) would otherwise be handed back for every s3:// URL.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the test S3 server."""
    import s3fs

    name = f"reelbatch-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name


@pytest.fixture(scope="session")
def shared_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect API server (no background services) for the `reelbatch` commands the tests start as processes.

    Without it each such command starts an ephemeral server of its own: 10-15 s of every test on two cores. The
    tests that are about the ephemeral server (tests/test_shutdown.py, tests/test_end_to_end.py) do not use it.
    """
    from tests import prefect_server

    home = tmp_path_factory.mktemp("shared-prefect-server")
    env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    try:
        process, api = prefect_server.start(home, env, "--no-services")
    except prefect_server.ServerDidNotStart as error:
        pytest.fail(str(error))
    try:
        yield api
    finally:
        prefect_server.stop(process)


@pytest.fixture
def prefect_api(shared_prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The commands this test starts as processes use the session's Prefect server (this process keeps its own)."""
    monkeypatch.setenv("PREFECT_API_URL", shared_prefect_server)
    return shared_prefect_server
