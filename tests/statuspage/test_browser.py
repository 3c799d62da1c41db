"""The status page in a real headless Chromium against a real daemon: what an operator sees and does."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.statuspage.scenario import (
    HOSTILE_ERROR,
    HOSTILE_LABEL,
    SECRET,
    TOKEN,
    Scene,
    chromium,
    chromium_path,
    running_scene,
)
from tests.support.eventually import eventually
from watcher.models import DeliveryState

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # /artifacts/ is in .gitignore
WAIT_MS = 15_000


async def _card(page: Page, status: str) -> str:
    return await page.locator(f'#counts [data-status="{status}"] .n').inner_text()


async def _state_is(scene: Scene, state: DeliveryState) -> bool:
    stored = await scene.store.get_delivery(scene.dead_id)
    return stored is not None and stored.state is state


async def test_operator_sees_the_state_and_replays_a_dead_delivery(tmp_path: Path) -> None:
    """Counts, rows and the dead delivery are shown; replay needs the right token and then redelivers."""
    async with (
        running_scene(tmp_path / "daemon", tokens=[TOKEN]) as scene,
        chromium(tmp_path / "profile", chromium_path()) as browser,
    ):
        page = await browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        await page.goto(scene.base_url + "/")

        # Without a token: the aggregate counts only.
        for status in ("active", "queued", "success", "failed", "missing"):
            assert await _card(page, status) == "1", status
        assert await page.locator("#queue-depth").inner_text() == "2"
        await expect(page.locator("#locked")).to_be_visible()
        assert await page.locator("#watches").count() == 0

        # A wrong token is refused and reveals nothing.
        await page.fill("#token", "not-the-token")
        await page.press("#token", "Enter")
        await expect(page.locator("#refresh-state")).to_contain_text("token rejected", timeout=WAIT_MS)
        assert await page.locator("#watches").count() == 0

        # The right token: watches, transitions and the dead delivery, user data shown as text.
        await page.fill("#token", TOKEN)
        await page.press("#token", "Enter")
        dead_row = page.locator(f'#dead tr[data-delivery="{scene.dead_id}"]')
        await expect(dead_row).to_be_visible(timeout=WAIT_MS)
        await expect(dead_row).to_contain_text(scene.jobs["failed"])
        await expect(dead_row).to_contain_text("job.failed")
        await expect(dead_row).to_contain_text("ops")
        assert await page.locator("#watches tbody tr").count() == 5
        failed_row = page.locator(f'#watches tr[data-job="{scene.jobs["failed"]}"]')
        await expect(failed_row).to_contain_text(f"note={HOSTILE_LABEL}")
        assert await page.locator("#transitions tbody tr").count() == 6  # success was active first
        await expect(page.locator("#transitions")).to_contain_text(HOSTILE_ERROR)
        assert "token" not in page.url
        assert await page.evaluate("sessionStorage.getItem('watcher.token')") == TOKEN
        html = await page.content()
        assert scene.receiver.url is not None
        assert SECRET not in html and TOKEN not in html
        assert scene.receiver.url.removeprefix("http://").rstrip("/") not in html

        # Typing pauses the refresh; replaying with a wrong token shows an error and changes nothing.
        await page.fill("#token", "typed-wrong-token")
        await expect(page.locator("#refresh-state")).to_contain_text("paused")
        await dead_row.locator("button.replay").click()
        await expect(page.locator("#message")).to_contain_text("refused", timeout=WAIT_MS)
        await expect(page.locator("#message")).to_contain_text("token is missing or wrong")
        stored = await scene.store.get_delivery(scene.dead_id)
        assert stored is not None and stored.state is DeliveryState.DEAD
        assert not [d for d in scene.receiver.deliveries if d.type == "job.failed"]

        # The right token: pending again, then delivered with the same webhook-id; the page follows.
        await page.fill("#token", TOKEN)
        await dead_row.locator("button.replay").click()
        await expect(page.locator("#message")).to_contain_text("pending again", timeout=WAIT_MS)
        await eventually(
            lambda: [d for d in scene.receiver.deliveries if d.type == "job.failed"], what="replayed delivery"
        )
        replayed = next(d for d in scene.receiver.deliveries if d.type == "job.failed")
        assert replayed.webhook_id == stored.event.id
        # The receiver has it before the worker has its answer: the outcome is recorded a moment later.
        await eventually(lambda: _state_is(scene, DeliveryState.DELIVERED), 15, "the replay recorded")
        await expect(page.locator("#dead")).to_contain_text("No dead deliveries", timeout=WAIT_MS)
        await expect(page.locator('#counts [data-delivery-state="dead"] .n')).to_have_text(
            "0", timeout=WAIT_MS
        )
        assert dialogs == []  # no user data ever ran as script

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "statuspage.png"), full_page=True)
