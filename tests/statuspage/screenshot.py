"""Regenerate the README's status-page screenshot: `.venv/bin/python -m tests.statuspage.screenshot [PNG]`.

Starts the same scene as the browser test (a real daemon with watches in every state and one dead
delivery, all on 127.0.0.1), opens the page in Debian's headless Chromium with the API token entered,
and writes a full-page PNG (default `docs/img/statuspage.png`). The test suite never writes into docs/.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from tests.statuspage.scenario import TOKEN, chromium, find_chromium, running_scene

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "img" / "statuspage.png"


async def capture(out: Path, executable: str) -> None:
    """Run the scene and save a screenshot of its status page to `out`."""
    with tempfile.TemporaryDirectory(prefix="statuspage-shot-") as tmp:
        async with (
            running_scene(Path(tmp) / "daemon", tokens=[TOKEN], hostile=False) as scene,
            chromium(Path(tmp) / "profile", executable) as browser,
        ):
            page = await browser.new_page()
            await page.goto(scene.base_url + "/")
            await page.fill("#token", TOKEN)
            await page.press("#token", "Enter")
            await page.locator("#dead tr").first.wait_for(timeout=15_000)
            await page.screenshot(path=str(out), full_page=True)


def main(argv: list[str]) -> int:
    """Write the screenshot; exit 2 with one line when chromium is missing."""
    out = Path(argv[0]) if argv else DEFAULT_OUT
    executable = find_chromium()
    if executable is None:
        print("chromium is not installed: apt-get install chromium", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(capture(out, executable))
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
