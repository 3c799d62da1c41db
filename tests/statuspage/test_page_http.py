"""The status page over plain HTTP against a real daemon: auth, escaping, filters, pagination, headers."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from tests.statuspage.scenario import HOSTILE_ERROR, HOSTILE_LABEL, SECRET, TOKEN, Scene, running_scene

ROLES = ("active", "queued", "success", "failed", "missing")


async def _get(
    http: aiohttp.ClientSession, url: str, token: str | None = None
) -> tuple[int, str, dict[str, str]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with http.get(url, headers=headers) as r:
        return r.status, await r.text(), dict(r.headers)


def _job_rows(page: str) -> list[str]:
    return re.findall(r'<tr data-job="([0-9a-f-]+)">', page)


def _assert_no_secrets(scene: Scene, page: str) -> None:
    assert scene.receiver.url is not None
    hook = scene.receiver.url.removeprefix("http://").rstrip("/")
    for secret in (SECRET, TOKEN, hook, "sim-token", "sim-key"):
        assert secret not in page


async def test_tokens_guard_the_details_and_everything_is_escaped(tmp_path: Path) -> None:
    """Without a token only counts; a wrong token is 401; the right one shows escaped rows and no secrets."""
    async with running_scene(tmp_path, tokens=[TOKEN]) as scene, aiohttp.ClientSession() as http:
        base = scene.base_url + "/"
        status, locked, headers = await _get(http, base)
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src 'sha256-" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == "no-store"
        assert 'id="locked"' in locked
        assert not any(job in locked for job in scene.jobs.values())
        for role in ROLES:
            assert re.search(rf'data-status="{role}"[^>]*><span class="n">1</span>', locked), role
        assert '<span id="queue-depth">2</span>' in locked
        _assert_no_secrets(scene, locked)

        status, body, headers = await _get(http, base, token="wrong-token")
        assert status == 401
        assert headers["Content-Type"].startswith("application/problem+json")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "wrong-token" not in body

        status, page, _ = await _get(http, base, token=TOKEN)
        assert status == 200
        assert sorted(_job_rows(page)) == sorted(scene.jobs.values())
        assert f'<tr data-delivery="{scene.dead_id}">' in page
        assert HOSTILE_LABEL not in page and "<img src=x" not in page
        assert "note=&lt;script&gt;alert(&quot;label&quot;)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
        assert HOSTILE_ERROR.split('"')[0] in page
        _assert_no_secrets(scene, page)
        assert page.count("<script>") == 1  # ours, and nothing from user data

        status, failed_only, _ = await _get(http, base + "?status=failed", token=TOKEN)
        assert status == 200
        assert _job_rows(failed_only) == [scene.jobs["failed"]]


async def test_pagination_and_bad_queries(tmp_path: Path) -> None:
    """With no tokens the page is open; the next-page links visit every watch once; bad queries are 400."""
    async with running_scene(tmp_path) as scene, aiohttp.ClientSession() as http:
        seen: list[str] = []
        url: str | None = scene.base_url + "/?limit=2"
        for _ in range(5):
            assert url is not None
            status, page, _ = await _get(http, url)
            assert status == 200
            assert 'id="token"' not in page
            rows = _job_rows(page)
            assert 1 <= len(rows) <= 2
            seen += rows
            link = re.search(r'<a id="next-page" href="\?([^"]+)">', page)
            url = None if link is None else scene.base_url + "/?" + link[1].replace("&amp;", "&")
            if url is None:
                break
        assert url is None
        assert sorted(seen) == sorted(scene.jobs.values())
        assert seen == sorted(seen)  # the store's stable order
        for query, field in (("status=a%01b", "status"), ("limit=0", "limit"), ("limit=²", "limit")):
            async with http.get(scene.base_url + "/?" + query) as r:
                assert r.status == 400, query
                assert r.content_type == "application/problem+json"
                problem = await r.json()
                assert problem["detail"].startswith(field + ":")
