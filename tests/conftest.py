"""Shared fixtures: real services (via scripts/services.sh) and a fresh store per backend.

A test that needs a service skips with the reason when the service is missing, except under
CI=true, where it fails: CI can never pass by skipping.
"""
from __future__ import annotations

import os
import subprocess
import uuid as _uuid
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "scripts" / "services.sh"
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_SECRET = "test-secret-" + "x" * 24  # test-only secret, never a deployment value


def missing(what: str, why: str):
    """Skip (locally) or fail (under CI=true) because a needed service or tool is unavailable."""
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services must be running)", pytrace=False)
    pytest.skip(message)


_service_env: dict[str, str] | None = None
_service_error: str | None = None


def _start_services() -> dict[str, str]:
    """Run `scripts/services.sh start` once; return the variables it exports."""
    global _service_env, _service_error
    if _service_env is None and _service_error is None:
        try:
            # 1800 s: a first start builds SecantusDB (minutes on two cores).
            out = subprocess.run(["bash", str(SERVICES), "start"], capture_output=True, text=True,
                                 timeout=1800, env=os.environ.copy())
        except (OSError, subprocess.TimeoutExpired) as exc:
            _service_error = f"scripts/services.sh start failed: {exc}"
        else:
            if out.returncode != 0:
                _service_error = ("scripts/services.sh start exited "
                                  f"{out.returncode}: {out.stderr.strip()[-800:]}")
            else:
                _service_env = _exported(out.stdout)
    if _service_error:
        return {}
    return _service_env or {}


# A way to reach each state from CREATED (admin token needed for reset).
STATE_PATHS = {
    "CREATED": [], "RUNNING": ["run"], "FAILED": ["fail"], "FINISHED": ["run", "finish"],
    "INDEXING": ["run", "finish", "index"], "VALIDATING": ["run", "finish", "validate"],
    "VALIDATED": ["run", "finish", "validate", "validated"],
    "REJECTED": ["run", "finish", "validate", "reject"],
    "FINALIZED": ["run", "finish", "validate", "validated", "finalize"],
    "RETIRED": ["fail", "retire"], "RESET": ["reset"],
}


@pytest.fixture
def isolated_cwd(tmp_path, monkeypatch):
    """No REACTOR_* variables and no repository config.yml reach the code under test."""
    for var in list(os.environ):
        if var.startswith("REACTOR_"):
            monkeypatch.delenv(var)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="session")
def mongo_uri() -> str:
    """URI of a MongoDB-wire server: MONGODB_URI, else the SecantusDB that services.sh starts."""
    uri = os.environ.get("MONGODB_URI") or _start_services().get("MONGODB_URI")
    if not uri:
        missing("MongoDB-wire server", _service_error or "MONGODB_URI unset and no SecantusDB")
    import pymongo

    try:
        pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000).admin.command("ping")
    except Exception as exc:  # noqa: BLE001 - any failure means the service is unusable
        missing("MongoDB-wire server", f"{uri} does not answer ping: {exc}")
    return uri


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a RabbitMQ broker: AMQP_URL, else the one services.sh starts."""
    url = os.environ.get("AMQP_URL") or _start_services().get("AMQP_URL")
    if not url:
        missing("RabbitMQ", _service_error or "AMQP_URL unset and no broker started")
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except Exception as exc:  # noqa: BLE001
        missing("RabbitMQ", f"{url} refuses connections: {exc}")
    return url


# --- a 3-node RabbitMQ cluster (tests/test_cluster.py) ----------------------------------------
class AmqpCluster(NamedTuple):
    """The RabbitMQ cluster of ``scripts/services.sh start rabbitmq-cluster``: one AMQP URL
    and one node name per node, in node order."""

    urls: list[str]
    nodes: list[str]


def _exported(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of services.sh as a dict."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            found[name] = value.strip().strip("'\"")
    return found


@pytest.fixture(scope="session")
def amqp_cluster() -> AmqpCluster:
    """A 3-node RabbitMQ cluster, started (or reused) through scripts/services.sh."""
    what = "a 3-node RabbitMQ cluster"
    try:
        # 1800 s: services.sh may wait that long for its lock (another start building a server).
        out = subprocess.run(["bash", str(SERVICES), "start", "rabbitmq-cluster"],
                             capture_output=True, text=True, timeout=1800, env=os.environ.copy())
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing(what, f"scripts/services.sh start rabbitmq-cluster failed: {exc}")
    if out.returncode != 0:
        missing(what, f"scripts/services.sh start rabbitmq-cluster exited {out.returncode}: "
                f"{out.stderr.strip()[-800:]}")
    env = _exported(out.stdout)
    urls = [u for u in env.get("AMQP_CLUSTER_URLS", "").split(",") if u]
    nodes = [n for n in env.get("AMQP_CLUSTER_NODES", "").split(",") if n]
    if len(urls) < 3 or len(nodes) != len(urls):
        missing(what, f"services.sh printed {len(urls)} URL(s) and {len(nodes)} node name(s); "
                "the tests need 3 or more of each, one name per URL (AMQP_CLUSTER_NODES)")
    import pika

    for url in urls:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
        except Exception as exc:  # noqa: BLE001 - any failure means the node is unusable
            missing(what, f"a node refuses connections: {exc}")
    return AmqpCluster(urls, nodes)


@pytest.fixture
def sqlite_uri(tmp_path) -> str:
    """A fresh embedded store file."""
    return f"sqlite:///{tmp_path / 'reactor.db'}"


@pytest.fixture
def mongo_store_uri(mongo_uri) -> str:
    """A fresh, uniquely named database on the MongoDB-wire server (dropped afterwards)."""
    import pymongo

    name = "t_" + _uuid.uuid4().hex[:16]
    base = mongo_uri.rstrip("/")
    scheme, rest = base.split("://", 1)
    host, _, query = rest.partition("/")
    query = query.partition("?")[2]
    uri = f"{scheme}://{host}/{name}" + (f"?{query}" if query else "")
    yield uri
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=3000)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "mongo"])
def store_uri(request) -> str:
    """The URI of a fresh store, once per backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_uri")
    return request.getfixturevalue("mongo_store_uri")


@pytest.fixture
def store(store_uri):
    """A fresh store, once per backend."""
    from reactor.store import open_store

    s = open_store(store_uri)
    yield s
    s.close()


@pytest.fixture
def authority():
    from reactor.domain.tokens import Authority

    return Authority(TEST_SECRET)


@pytest.fixture
def jobs(store, authority):
    """Job operations on a fresh store with one registered pipeline (``jobs.pipeline_uuid``)."""
    from reactor.domain.identifiers import pipeline_uuid
    from reactor.engine.jobs import Jobs

    j = Jobs(store, authority)
    p = pipeline_uuid("test-pipeline")
    store.add_pipeline({"uuid": p, "name": "test-pipeline"})
    j.pipeline_uuid = p
    return j
