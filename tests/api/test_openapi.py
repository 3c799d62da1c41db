"""schemathesis against `watcher run` as a subprocess: every operation, no 5xx, answers match the document."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.config import SchemathesisConfig

from tests.api.conftest import SECRET
from tests.support import config
from tests.support.ports import free_port
from tests.support.postgres import pg_schema
from watcher.config import load_config
from watcher.http.openapi import openapi_document
from watcher.http.v1.models import WatchCreate
from watcher.http.v1.routes import ROUTES

TOKEN = "schemathesis-token"
ST_CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 30


def _config(tmp: Path, port: int, store_url: str | None = None) -> Path:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: polls and deliveries just fail and retry
    return config.write_config(
        tmp,
        f"{dead}/api/v2",
        port=port,
        webhooks=[
            {"name": "ops", "url": f"{dead}/hook", "secret": SECRET},
            {"name": "audit", "url": f"{dead}/audit", "secret": SECRET},
        ],
        sections={
            "upstream": {"token": "t", "api_key": "k"},
            "upstream.workspaces.other": {},
            "polling": None,
            "api": {"tokens": [TOKEN], "max_body_bytes": 65536},
            "store": {"url": store_url or f"sqlite:///{tmp / 'w.db'}"},
            "watchlist": None,
            "daemon": {"state_dir": str(tmp), "shutdown_grace_s": 2.0},
            "log": {"level": "warning", "format": "json"},
        },
        hook_defaults={},
    )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each real store: None for SQLite in the daemon's directory, else a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    schema = pg_schema("openapi")
    url = asyncio.run(schema.__aenter__())
    try:
        yield url
    finally:
        asyncio.run(schema.__aexit__(None, None, None))


@contextlib.contextmanager
def _daemon(tmp: Path, store_url: str | None) -> Iterator[str]:
    """`watcher run` on a free loopback port, yielded once ready (its store open: before that the API answers
    503, which the checks count as a server error); on exit, it must stop cleanly with no traceback in its
    log."""
    port = free_port()
    log = (tmp / "daemon.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watcher", "run", "-c", str(_config(tmp, port, store_url))],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1):  # noqa: S310 -- loopback
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp / "daemon.log").read_text()) from None
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(5)
        log.close()
    text = (tmp / "daemon.log").read_text()
    assert code == 0, text
    assert "Traceback" not in text and "api.handler_failed" not in text, text


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory: pytest.TempPathFactory, store_url: str | None) -> Iterator[str]:
    """One daemon for the whole module, once per store."""
    with _daemon(tmp_path_factory.mktemp("openapi"), store_url) as url:
        yield url


def _st_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_path(ST_CONFIG)


@pytest.fixture(scope="module")
def api_schema(daemon_url: str) -> schemathesis.BaseSchema:
    """The document the daemon serves, with its base URL and the token."""
    schema = schemathesis.openapi.from_url(daemon_url + "/openapi.json", config=_st_config())
    schema.config.update(base_url=daemon_url, headers={"Authorization": f"Bearer {TOKEN}"})
    return schema


def _fuzz(operation: Any, mode: schemathesis.GenerationMode) -> None:
    """Run `MAX_EXAMPLES` generated requests of one operation and check each answer."""

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate()

    check()


def test_api_conforms(api_schema: schemathesis.BaseSchema) -> None:
    """Valid and invalid inputs: no 5xx, invalid ones refused, answers conform to the document.

    The pytest plugin of schemathesis does not run on pytest 9, so each operation gets its own hypothesis
    run here; a failure names the operation.
    """
    assert "413" in api_schema.config.checks.negative_data_rejection.expected_statuses  # our settings apply
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    labels = {o.label for o in operations}
    expected = {f"{r.method} {r.path}" for r in ROUTES} | {"GET /healthz", "GET /readyz", "GET /metrics"}
    assert expected <= labels
    for operation, mode in itertools.product(operations, list(schemathesis.GenerationMode)):
        try:
            _fuzz(operation, mode)
        except Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label  # nothing to get wrong
        except Exception as exc:
            raise AssertionError(f"{operation.label} ({mode.value} data): {exc}") from exc


def test_document_covers_every_route_and_model(tmp_path: Path) -> None:
    """Every route of the table is in the document, with the request model's own schema."""
    path = _config(tmp_path, free_port())
    doc = openapi_document(load_config(path, env={}))
    assert doc["openapi"].startswith("3.1")
    for r in ROUTES:
        assert r.method.lower() in doc["paths"][r.path], r.path
    create = doc["components"]["schemas"]["WatchCreate"]
    assert create["properties"]["job_id"] == WatchCreate.model_json_schema()["properties"]["job_id"]
    assert create["properties"]["workspace"]["anyOf"][0]["enum"] == ["acme", "other"]
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    json.dumps(doc)  # serialisable as served


def test_schemathesis_cli_with_every_check(store_url: str | None, tmp_path: Path) -> None:
    """The run an outsider makes, `st run --checks all`: every phase (probes, examples, coverage with its
    undeclared methods and boundary values, fuzzing, stateful) and every check; no failure, and a daemon
    log with no traceback."""
    with _daemon(tmp_path, store_url) as url:
        command = [
            sys.executable,
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "--config-file",
            str(ST_CONFIG),
            "run",
            url + "/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20261130",
            "--no-color",
        ]
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
        )
        (tmp_path / "st.out").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_document_lists_every_problem_a_route_can_answer(tmp_path: Path) -> None:
    """503 (store outage, with Retry-After) on every /v1 operation; 409 where a race or a state makes it;
    a batch item may be anything, because a bad item is answered in the 200, not refused."""
    doc = openapi_document(load_config(_config(tmp_path, free_port()), env={}))
    for r in ROUTES:
        responses = doc["paths"][r.path][r.method.lower()]["responses"]
        assert {"400", "401", "503"} <= set(responses), (r.method, r.path)
        assert "Retry-After" in responses["503"]["headers"]
    create = doc["paths"]["/v1/watches"]["post"]["responses"]["409"]["description"]
    assert "deleted while it was being registered" in create
    retry = doc["paths"]["/v1/deliveries/{delivery_id}/retry"]["post"]["responses"]["409"]["description"]
    assert "not dead" in retry
    items = doc["components"]["schemas"]["BatchCreate"]["properties"]["watches"]["items"]
    assert items["anyOf"] == [{"$ref": "#/components/schemas/WatchCreate"}, {}]
