"""The page's pure parts: rendering escapes every value, the locked view, query parsing, the CSP."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from watcher.http.statuspage.page import parse_query
from watcher.http.statuspage.render import CSP, SCRIPT, STYLE, PageView, render
from watcher.models import Delivery, DeliveryState, Event, Watch

NOW = 1_700_000_000.0
EVIL = "\"'><script>alert(1)</script>&"


def _event(job_id: str, error: str) -> Event:
    data = {"job": {"id": job_id, "status": "failed", "error": error}, "previous_status": "active"}
    return Event("ev-1", job_id, EVIL, "job.failed", NOW - 5, {"type": "job.failed", "data": data})


def _view(**overrides: object) -> PageView:
    watch = Watch(
        job_id="00000000-0000-4000-8000-000000000001",
        workspace=EVIL,
        sources=2,
        registered_at=NOW - 60,
        labels={EVIL: EVIL},
        final="failed",
        last_error=EVIL * 20,
    )
    event = _event(watch.job_id, EVIL)
    delivery = Delivery(7, event, EVIL, DeliveryState.DEAD, 3, NOW, NOW - 4, last_error=EVIL)
    base: dict[str, object] = {
        "now": NOW,
        "version": EVIL,
        "refresh_s": 5.0,
        "token_required": True,
        "detail": True,
        "counts": {"failed": 1, "active": 2},
        "pending": 0,
        "dead": 1,
        "status": "failed",
        "cursor": EVIL,
        "watches": (watch,),
        "next_cursor": EVIL,
        "transitions": (event,),
        "dead_deliveries": (delivery,),
        "job_types": (
            {"workspace": EVIL, "name": EVIL, "samples": 40, "p50_s": 12.5, "p90_s": 30.0, "p99_s": None},
        ),
        "job_types_total": 3,
    }
    base.update(overrides)
    return PageView(**base)  # type: ignore[arg-type]


class TestRender:
    """`render` output."""

    def test_every_user_value_is_escaped(self) -> None:
        """Labels, workspaces, errors, webhook names and cursors never appear as markup."""
        page = render(_view())
        assert "<script>alert" not in page
        assert page.count("<script>") == 1
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        for attr in re.findall(r'(?:href|title|data-[a-z-]+)="([^"]*)"', page):
            assert "<" not in attr and '"' not in attr

    def test_job_types_table(self) -> None:
        """The learnt job types, as `GET /v1/job-types` lists them; a cut list says how many there are."""
        page = render(_view())
        section = page[page.index('<section id="job-types">') :]
        assert "most recently finished 1 of 3" in section
        assert (
            '<td class="num">40</td><td class="num">12.5</td><td class="num">30</td><td class="num">-</td>'
            in section
        )
        assert "No job type learnt yet" in render(_view(job_types=(), job_types_total=0))
        assert 'id="job-types"' not in render(_view(detail=False))

    def test_links_keep_the_filter_and_encode_the_cursor(self) -> None:
        """The next-page link carries the status filter and the URL-encoded cursor."""
        page = render(_view())
        link = re.search(r'id="next-page" href="([^"]+)"', page)
        assert link is not None
        assert link[1].startswith("?status=failed&amp;cursor=%22%27%3E%3Cscript%3E")

    def test_locked_view_shows_counts_only(self) -> None:
        """Without detail: the count cards and the token form, no job id, label or error."""
        page = render(_view(detail=False, version="1.0"))
        assert 'id="locked"' in page and 'id="token"' in page
        assert "00000000-0000-4000-8000-000000000001" not in page
        assert "&lt;script&gt;" not in page
        assert '<span id="queue-depth">2</span>' in page

    def test_no_token_field_when_the_api_is_open(self) -> None:
        """With no tokens configured there is nothing to type and the details are shown."""
        page = render(_view(token_required=False))
        assert 'id="token"' not in page
        assert "replay needs none" in page
        assert 'data-delivery="7"' in page

    def test_the_token_input_has_no_name(self) -> None:
        """A form field without a name can never be submitted into a URL."""
        page = render(_view())
        token_input = re.search(r'<input id="token"[^>]*>', page)
        assert token_input is not None and "name=" not in token_input[0]

    def test_grown_statuses_get_cards_in_their_group(self) -> None:
        """A grown status (SPEC §2) has its own card: with the finished ones if it is a terminal status,
        else with the watched ones, whose total includes it; tabs link to both."""
        counts = {"active": 2, "failed": 1, "cancelled": 3, "paused": 4}
        page = render(_view(counts=counts, terminal_statuses=frozenset({"success", "failed", "cancelled"})))
        watched, finished = page.split("<h3>Finished", 1)
        assert 'data-status="paused"' in watched and 'data-status="cancelled"' in finished
        assert '<span id="queue-depth">6</span>' in watched
        assert re.search(r'data-status="cancelled" href="\?status=cancelled"><span class="n">3<', finished)
        assert 'href="?status=paused"' in page.split('<nav class="tabs">', 1)[1]

    def test_csp_allows_exactly_the_inline_script_and_style(self) -> None:
        """The Content-Security-Policy pins the hashes of our script and style and nothing else."""
        for source in (SCRIPT, STYLE):
            digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in CSP
        assert "unsafe-inline" not in CSP and "default-src 'none'" in CSP


class TestParseQuery:
    """`parse_query` of the page's URL."""

    def test_defaults(self) -> None:
        assert parse_query({}) == (None, None, 50)

    def test_valid(self) -> None:
        assert parse_query({"status": "missing", "cursor": "abc", "limit": "200"}) == ("missing", "abc", 200)
        assert parse_query({"status": "cancelled"}) == ("cancelled", None, 50)  # a grown status

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ({"status": "a\x01b"}, "status"),
            ({"status": "x" * 65}, "status"),
            ({"limit": "0"}, "limit"),
            ({"limit": "201"}, "limit"),
            ({"limit": "²"}, "limit"),
            ({"limit": "9" * 5000}, "limit"),
            ({"cursor": "x" * 65}, "cursor"),
            ({"cursor": "a\nb"}, "cursor"),
        ],
    )
    def test_invalid_names_the_parameter(self, query: dict[str, str], field: str) -> None:
        with pytest.raises(ValueError, match=rf"^{field}: "):
            parse_query(query)
