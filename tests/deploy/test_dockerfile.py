"""The Dockerfile, checked statically: there is no Docker engine here, so `docker build` cannot run.

What can run does: the instructions are parsed and checked, the wheel the image installs is built from
exactly the context .dockerignore lets through, and the HEALTHCHECK command is run against a real daemon.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT
from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.support.ports import free_port

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The instructions grouped by build stage (each starts with FROM)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def only(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def test_multi_stage_on_a_pinned_slim_python() -> None:
    """Two stages on one base pinned to a Python 3.11 patch release (slim), never `latest`."""
    args = dict(a.split("=", 1) for kw, a in instructions() if kw == "ARG" and "=" in a)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    build, runtime = stages()
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0][1].startswith("${PYTHON_IMAGE}")


def test_build_stage_makes_a_wheel_and_installs_it() -> None:
    """The first stage builds wheels (the package and its dependencies) and installs from them offline."""
    build, runtime = stages()
    run = " ".join(a for kw, a in build if kw == "RUN")
    assert "pip wheel --wheel-dir /wheels ." in run
    assert "pip install --no-index --find-links /wheels job-watcher" in run
    assert ("COPY", "--from=build /opt/job-watcher /opt/job-watcher") in runtime


def test_runtime_stage_is_non_root_with_entrypoint_and_healthcheck() -> None:
    """A numeric non-root USER, ENTRYPOINT ["watcher", "run"], a curl-free HEALTHCHECK on /healthz."""
    runtime = stages()[-1]
    user = only(runtime, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "USER must be numeric (runAsNonRoot can check it)"
    assert json.loads(only(runtime, "ENTRYPOINT")) == ["watcher", "run"]
    assert only(runtime, "STOPSIGNAL") == "SIGTERM"
    assert "8080" in only(runtime, "EXPOSE")
    cmd = healthcheck_command()
    assert cmd[:2] == ["python", "-c"] and "urllib.request" in cmd[2] and "/healthz" in cmd[2]
    text = DOCKERFILE.read_text()
    assert "curl " not in text and "wget " not in text


def healthcheck_command() -> list[str]:
    """The exec-form command of the HEALTHCHECK instruction."""
    args = only(stages()[-1], "HEALTHCHECK")
    _, _, exec_form = args.partition("CMD ")
    return list(json.loads(exec_form))


def context_files() -> list[str]:
    """The allowlist of .dockerignore ('*' then '!path' lines), which is all the Dockerfile may COPY."""
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*", ".dockerignore must start by excluding everything"
    return [ln[1:].rstrip("/") for ln in lines[1:] if ln.startswith("!")]


def test_copies_only_what_the_context_allows() -> None:
    """Every COPY source of the build stage is in the .dockerignore allowlist."""
    allowed = set(context_files())
    for kw, args in stages()[0]:
        if kw == "COPY":
            *sources, _dest = args.split()
            assert {s.rstrip("/") for s in sources} <= allowed, args


def test_wheel_builds_from_the_docker_context(tmp_path: Path) -> None:
    """`pip wheel` on exactly the context builds the wheel the image installs, migrations included."""
    context = tmp_path / "context"
    context.mkdir()
    for name in context_files():
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / name)
    # Offline: the test venv's setuptools builds it (the image build fetches its own build backend).
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    out = subprocess.run(
        [*pip_wheel, "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "wheels").glob("job_watcher-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "watcher = watcher.cli:main" in zf.read(entry_points).decode()
    assert "watcher/py.typed" in names and "watcher/daemon/systemd.py" in names
    migrations = {p.name for p in (ROOT / "watcher" / "store" / "migrations").glob("*.sql")}
    assert migrations and {f"watcher/store/migrations/{m}" for m in migrations} <= names


@pytest.mark.slow
async def test_healthcheck_command_against_a_real_daemon(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """The HEALTHCHECK's python one-liner exits 0 against a running daemon and non-zero once it is gone."""
    port = free_port()
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port, watchlist=False), port)
    daemon.start()
    await daemon.wait_ready()
    cmd = healthcheck_command()
    env = {"JOB_WATCHER_HEALTHCHECK_URL": f"{daemon.api}/healthz", "PATH": "/usr/bin:/bin"}

    def check() -> int:
        return subprocess.run([sys.executable, *cmd[1:]], env=env, capture_output=True, timeout=30).returncode

    assert await asyncio.to_thread(check) == 0
    assert daemon.stop() == 0
    assert await asyncio.to_thread(check) != 0
