"""The status page's HTML: a pure function of a `PageView`, every value escaped, no external assets.

Everything interpolated here may be user data (job labels, upstream error strings, event bodies), so each
value passes through `_e` (HTML-escaped, quotes included) and every link is built with `urlencode`. The
page never receives a webhook URL, a secret or a token: `PageView` has no field that could carry one.
The inline script and style are fixed strings whose hashes go into the Content-Security-Policy, so even a
value that escaped escaping could not run script.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from watcher.clock import iso_utc
from watcher.models import Delivery, Event, Watch
from watcher.statuses import FINISHED_STATUSES, LIST_STATUSES, UNFINISHED_STATUSES

_MAX_GROWN = 20  # cards for statuses the upstream grew (SPEC §2); a page stays bounded whatever it sends
_FIRST = '<span class="dim">(first seen)</span>'
_CUT = 160  # longest error or label text shown in a cell; the full text is in the cell's title


@dataclass(slots=True, frozen=True)
class PageView:
    """What the page shows; `detail` False renders the aggregate counts only (token required, not given)."""

    now: float
    version: str
    refresh_s: float
    token_required: bool
    detail: bool
    counts: Mapping[str, int]  # watches per list status, finished ones included
    pending: int
    dead: int
    status: str | None = None
    cursor: str | None = None
    limit: int = 50
    watches: tuple[Watch, ...] = ()
    next_cursor: str | None = None
    transitions: tuple[Event, ...] = ()
    dead_deliveries: tuple[Delivery, ...] = ()
    terminal_statuses: frozenset[str] = frozenset()  # `upstream.terminal_statuses`: which grown ones finish
    job_types: tuple[Mapping[str, object], ...] = ()  # what `GET /v1/job-types` lists (SPEC §12)
    job_types_total: int = 0


def _grown(v: PageView) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Statuses in the counts beyond the documented ones, (unfinished, finished), the most common first."""
    grown = sorted((s for s in v.counts if s not in LIST_STATUSES), key=lambda s: (-v.counts[s], s))
    grown = grown[:_MAX_GROWN]
    return (
        tuple(s for s in grown if s not in v.terminal_statuses),
        tuple(s for s in grown if s in v.terminal_statuses),
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cut(text: str, n: int = _CUT) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _ago(now: float, ts: float | None) -> str:
    if ts is None:
        return '<span class="dim">never</span>'
    s = max(0.0, now - ts)
    text = f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
    return f'<time datetime="{_e(iso_utc(ts))}" title="{_e(iso_utc(ts))}">{_e(text)} ago</time>'


def _href(**params: str | int | None) -> str:
    kept = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(kept) if kept else "./"


def _long(text: str | None) -> str:
    if not text:
        return ""
    return f'<span title="{_e(text)}">{_e(_cut(text))}</span>'


def _badge(status: str) -> str:
    return f'<span class="badge s-{_e(status)}">{_e(status)}</span>'


def _table(cls: str, heads: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _counts(v: PageView) -> str:
    def card(status: str) -> str:
        current = " current" if v.status == status else ""
        return (
            f'<a class="card{current}" data-status="{_e(status)}" href="{_e(_href(status=status))}">'
            f'<span class="n">{v.counts.get(status, 0)}</span>{_badge(status)}</a>'
        )

    grown_open, grown_done = _grown(v)
    unfinished, finished = UNFINISHED_STATUSES + grown_open, FINISHED_STATUSES + grown_done
    depth = sum(n for s, n in v.counts.items() if s not in FINISHED_STATUSES and s not in v.terminal_statuses)
    return (
        '<section id="counts"><h2>Watches by status</h2>'
        f'<div class="group"><h3>Being watched: <span id="queue-depth">{depth}</span></h3>'
        f"{''.join(card(s) for s in unfinished)}</div>"
        f'<div class="group"><h3>Finished (kept for the retention period)</h3>'
        f"{''.join(card(s) for s in finished)}</div>"
        '<div class="group"><h3>Webhook deliveries</h3>'
        f'<span class="card" data-delivery-state="pending"><span class="n">{v.pending}</span>pending</span>'
        f'<span class="card" data-delivery-state="dead"><span class="n">{v.dead}</span>dead</span>'
        "</div></section>"
    )


def _labels(labels: Mapping[str, str]) -> str:
    return " ".join(f'<span class="label">{_e(_cut(f"{k}={val}", 60))}</span>' for k, val in labels.items())


def _watches(v: PageView) -> str:
    tabs = [f'<a href="./"{" class=current" if v.status is None else ""}>all</a>']
    grown_open, grown_done = _grown(v)
    for s in UNFINISHED_STATUSES + grown_open + FINISHED_STATUSES + grown_done:
        cur = " class=current" if v.status == s else ""
        tabs.append(f'<a href="{_e(_href(status=s))}"{cur}>{_e(s)}</a>')
    rows = [
        f'<tr data-job="{_e(w.job_id)}"><td class="id">{_e(w.job_id)}</td><td>{_e(w.workspace)}</td>'
        f"<td>{_badge(w.final or w.status or 'unknown')}</td><td>{_labels(w.labels)}</td>"
        f'<td class="num">{w.polls}</td><td>{_ago(v.now, w.last_polled_at)}</td>'
        f"<td>{_ago(v.now, w.registered_at)}</td><td>{_long(w.last_error)}</td></tr>"
        for w in v.watches
    ]
    pages = []
    if v.cursor is not None:
        pages.append(f'<a href="{_e(_href(status=v.status, limit=_limit(v)))}">« first page</a>')
    if v.next_cursor is not None:
        nxt = _href(status=v.status, limit=_limit(v), cursor=v.next_cursor)
        pages.append(f'<a id="next-page" href="{_e(nxt)}">next page »</a>')
    what = "watches" if v.status is None else f"watches with status {v.status}"
    table = _table(
        "watches",
        ("job id", "workspace", "status", "labels", "polls", "last poll", "registered", "last error"),
        rows,
        f"No {what}{' on this page' if v.cursor else ''}.",
    )
    return (
        f'<section id="watches"><h2>Watches</h2><nav class="tabs">{"".join(tabs)}</nav>{table}'
        f'<nav class="pages">{" ".join(pages)}</nav></section>'
    )


def _limit(v: PageView) -> int | None:
    return None if v.limit == 50 else v.limit


def _transitions(v: PageView) -> str:
    rows = []
    for ev in v.transitions:
        data = ev.payload.get("data")
        data = data if isinstance(data, dict) else {}
        job = data.get("job")
        job = job if isinstance(job, dict) else {}
        prev = data.get("previous_status")
        status = ev.type.removeprefix("job.")
        detail = data.get("reason") or job.get("error")
        rows.append(
            f'<tr data-event="{_e(ev.id)}"><td>{_ago(v.now, ev.created_at)}</td>'
            f'<td class="id">{_e(ev.job_id)}</td>'
            f"<td>{_badge(str(prev)) if prev else _FIRST} → {_badge(status)}</td>"
            f"<td>{_e(ev.workspace)}</td><td>{_long(str(detail) if detail else None)}</td></tr>"
        )
    table = _table(
        "transitions", ("detected", "job id", "transition", "workspace", "error"), rows, "No transitions yet."
    )
    return f'<section id="transitions"><h2>Recent transitions</h2>{table}</section>'


def _dead(v: PageView) -> str:
    rows = [
        f'<tr data-delivery="{d.id}"><td class="num">{d.id}</td><td>{_ago(v.now, d.created_at)}</td>'
        f'<td class="id">{_e(d.event.job_id)}</td><td>{_e(d.event.type)}</td><td>{_e(d.webhook)}</td>'
        f'<td class="num">{d.attempts}</td><td>{_long(d.last_error)}</td>'
        f'<td><button type="button" class="replay" data-id="{d.id}">Replay</button></td></tr>'
        for d in v.dead_deliveries
    ]
    shown = f" (newest {len(rows)} of {v.dead})" if v.dead > len(rows) else ""
    table = _table(
        "dead",
        ("id", "created", "job id", "event", "webhook", "attempts", "last error", ""),
        rows,
        "No dead deliveries.",
    )
    return f'<section id="dead"><h2>Dead deliveries{_e(shown)}</h2>{table}</section>'


def _seconds(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "-"


def _job_types(v: PageView) -> str:
    rows = [
        f"<tr><td>{_e(t.get('workspace'))}</td><td>{_long(str(t.get('name')))}</td>"
        f'<td class="num">{_e(t.get("samples"))}</td><td class="num">{_seconds(t.get("p50_s"))}</td>'
        f'<td class="num">{_seconds(t.get("p90_s"))}</td><td class="num">{_seconds(t.get("p99_s"))}</td></tr>'
        for t in v.job_types
    ]
    total = v.job_types_total
    shown = f" (most recently finished {len(rows)} of {total})" if total > len(rows) else ""
    table = _table(
        "job-types",
        ("workspace", "name", "samples", "p50 s", "p90 s", "p99 s"),
        rows,
        "No job type learnt yet: durations are learnt from finished jobs.",
    )
    return f'<section id="job-types"><h2>Job types{_e(shown)}</h2>{table}</section>'


def _token_form(v: PageView) -> str:
    if not v.token_required:
        return '<p class="dim" id="auth-note">The API has no tokens configured: replay needs none.</p>'
    # No `name` on the input: even with scripts disabled the form can never put the token in a URL.
    return (
        '<form id="auth" autocomplete="off"><label for="token">API token</label>'
        '<input id="token" type="password" spellcheck="false" placeholder="Bearer token from [api] tokens">'
        '<button type="submit">Use token</button></form>'
    )


def render(v: PageView) -> str:
    """The whole page as one HTML document."""
    if v.detail:
        body = _counts(v) + _dead(v) + _watches(v) + _transitions(v) + _job_types(v)
    else:
        body = (
            _counts(v) + '<p id="locked">Enter an API token above to see the watches, the recent '
            "transitions and the dead deliveries.</p>"
        )
    view = "detail" if v.detail else "locked"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<noscript><meta http-equiv="refresh" content="{v.refresh_s:g}"></noscript>'
        f"<title>job-watcher status</title><style>{STYLE}</style></head>"
        f'<body data-refresh-s="{v.refresh_s:g}" data-view="{view}">'
        f'<header><h1>job-watcher</h1><span class="dim">version {_e(v.version)}</span>'
        f'<span class="dim">updated <span id="updated">{_e(iso_utc(v.now))}</span></span>'
        f'<span id="refresh-state" class="dim">auto-refresh every {v.refresh_s:g} s</span>'
        f"{_token_form(v)}</header>"
        '<p id="message" role="status" aria-live="polite"></p>'
        f'<main id="content">{body}</main><script>{SCRIPT}</script></body></html>'
    )


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#1d232a;background:#f7f8fa}
header{display:flex;flex-wrap:wrap;gap:1em;align-items:baseline;padding:.8em 0;
border-bottom:1px solid #d8dde3}
h1{font-size:1.3em;margin:0}h2{font-size:1.1em;margin:1.4em 0 .5em}h3{font-size:.9em;margin:.2em 0 .4em}
.dim{color:#68727d}#auth{margin-left:auto;display:flex;gap:.4em;align-items:center}
#auth input{width:16em;padding:.25em}#message{min-height:1.4em;margin:.4em 0}
#message.error,#refresh-state.error{color:#b3261e;font-weight:600}#message.ok{color:#17663a;font-weight:600}
.group{display:inline-block;vertical-align:top;margin-right:2em}
.card{display:inline-flex;flex-direction:column;align-items:center;min-width:5.5em;padding:.4em;
margin:0 .3em .3em 0;background:#fff;border:1px solid #d8dde3;border-radius:6px;color:inherit;
text-decoration:none}
.card.current{border-color:#2563eb;box-shadow:0 0 0 1px #2563eb}.card .n{font-size:1.5em;font-weight:600}
table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e3e7eb;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}.num{text-align:right}.id{font-family:ui-monospace,monospace;font-size:12px}
.badge{display:inline-block;padding:0 .45em;border-radius:9px;background:#e3e7eb;font-size:12px}
.s-success{background:#cdeed8}.s-failed,.s-missing,.s-expired{background:#f8d4d0}
.s-active,.s-retrying{background:#d6e4fd}.s-queued,.s-created{background:#fbeecb}
.label{display:inline-block;background:#eef1f4;border-radius:3px;padding:0 .3em;margin:1px;font-size:12px}
.tabs a,.pages a{margin-right:.8em}.tabs a.current{font-weight:700;text-decoration:none;color:inherit}
.pages{margin:.5em 0}.empty{color:#68727d;font-style:italic}button.replay{cursor:pointer}
"""

SCRIPT = """
(() => {
  const KEY = "watcher.token", every = Number(document.body.dataset.refreshS) * 1000;
  const input = document.getElementById("token"), state = document.getElementById("refresh-state");
  const message = document.getElementById("message");
  if (input) input.value = sessionStorage.getItem(KEY) || "";
  const token = () => (input ? input.value.trim() : "");
  const auth = () => (token() ? {Authorization: "Bearer " + token()} : {});
  const say = (el, text, kind) => { el.textContent = text; el.className = kind || "dim"; };
  const idle = "auto-refresh every " + every / 1000 + " s";
  let busy = false;
  async function refresh(force) {
    if (busy || (!force && (document.hidden || document.activeElement === input))) return;
    busy = true;
    try {
      const r = await fetch(location.href, {headers: auth(), cache: "no-store"});
      if (r.status === 401) return say(state, "API token rejected: enter a valid token", "error");
      if (!r.ok) return say(state, "refresh failed: HTTP " + r.status, "error");
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      document.getElementById("content").replaceWith(doc.getElementById("content"));
      document.getElementById("updated").textContent = doc.getElementById("updated").textContent;
      document.body.dataset.view = doc.body.dataset.view;
      say(state, idle);
    } catch (e) {
      say(state, "refresh failed: the daemon did not answer", "error");
    } finally { busy = false; }
  }
  if (input) {
    input.addEventListener("focus", () => say(state, "auto-refresh paused while you type"));
    input.addEventListener("blur", () => say(state, idle));
    document.getElementById("auth").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, token());
      input.blur();
      refresh(true);
    });
  }
  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("button.replay");
    if (!button) return;
    const id = button.dataset.id;
    button.disabled = true;
    if (input) sessionStorage.setItem(KEY, token());
    try {
      const r = await fetch("v1/deliveries/" + encodeURIComponent(id) + "/retry",
                            {method: "POST", headers: auth(), cache: "no-store"});
      if (r.ok) {
        say(message, "Delivery " + id + " is pending again and will be redelivered.", "ok");
        return refresh(true);
      }
      let detail = "HTTP " + r.status;
      try { const p = await r.json(); detail = p.detail || p.title || detail; } catch (e) {}
      if (r.status === 401) detail = "the API token is missing or wrong";
      say(message, "Replay of delivery " + id + " refused: " + detail + ".", "error");
    } catch (e) {
      say(message, "Replay of delivery " + id + " failed: the daemon did not answer.", "error");
    }
    button.disabled = false;
  });
  if (document.body.dataset.view === "locked" && token()) refresh(true);
  setInterval(refresh, every);
})();
"""

CSP = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
