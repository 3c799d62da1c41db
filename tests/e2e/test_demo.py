"""`watcher demo` — what `make demo` runs — ends by itself with everything delivered."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_to_completion() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "demo", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "summary: 6 jobs watched, 6 finished and delivered" in out
    assert ", 0 rejected," in out
    for kind in ("job.queued", "job.active", "job.retrying", "job.success", "job.failed", "job.missing"):
        assert f"verified {kind}" in out, kind
    assert "Traceback" not in result.stderr
