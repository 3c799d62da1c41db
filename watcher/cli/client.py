"""`watcher watches …`, `watcher deliveries …` and `watcher webhooks test NAME`: the `/v1` API for
operators at a shell.

The daemon's address and token come from `--url`/`--token`, else `WATCHER_API_TOKEN` for the token, else the
configuration (`-c`, `$WATCHER_CONFIG`): `api.listen` and the token of the client named by `--client`, else
the first of `api.tokens`, else that of the first of `api.clients` (a scoped client can do what its scopes
allow, in its workspaces; the daemon answers 403 or 404 for the rest). An HTTPS API (`api.tls_cert_file`) is
verified with the system's trust store, or only with `--ca-file` (else `$WATCHER_API_CA_FILE`): the CA that
signed the daemon's certificate, or a self-signed certificate itself. Output is a table for
people, or the API's JSON with `--json`. Exit codes: 0 done, 1 the daemon answered an error (its problem's
title and detail on one line) or could not be reached, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
DEFAULT_URL = "http://127.0.0.1:8080"
_MAX_CELL = 48


class ClientError(Exception):
    """A one-line error for the user; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    """The parser of both client commands and their subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=os.environ.get("WATCHER_CONFIG"), help="daemon configuration"
    )
    common.add_argument("--url", help=f"the daemon's API, e.g. {DEFAULT_URL} (default: from api.listen)")
    common.add_argument("--token", help="bearer token (default: $WATCHER_API_TOKEN, else from -c)")
    common.add_argument("--client", metavar="NAME", help="use the token of this [[api.clients]] entry of -c")
    common.add_argument(
        "--ca-file",
        default=os.environ.get("WATCHER_API_CA_FILE") or None,
        help="trust only this CA (PEM) for an https:// API (default: $WATCHER_API_CA_FILE, else the system)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon")
    parser = argparse.ArgumentParser(prog="watcher", description="Talk to a running job-watcher daemon.")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    watches = top.add_parser("watches", help="register, list, show and forget watches").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    add = watches.add_parser("add", parents=[common], help="watch a job")
    add.add_argument("job_id")
    add.add_argument("--workspace", help="a configured workspace (default: upstream.workspace_slug)")
    add.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    add.add_argument("--webhook", action="append", metavar="NAME", help="repeatable (default: all)")
    add.add_argument("--max-watch-s", type=float, help="give up after this many seconds")
    ls = watches.add_parser("list", parents=[common], help="list watches")
    ls.add_argument("--status", help="e.g. active, failed, unknown, quarantined")
    ls.add_argument("--label", metavar="KEY=VALUE", help="only watches with this label")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--cursor", help="next_cursor printed by the previous page")
    watches.add_parser(
        "show", parents=[common], help="one watch, its transitions and deliveries"
    ).add_argument("job_id")
    watches.add_parser("rm", parents=[common], help="stop watching a job").add_argument("job_id")
    watches.add_parser(
        "release", parents=[common], help="poll a quarantined watch again (its failures reset)"
    ).add_argument("job_id")
    deliveries = top.add_parser("deliveries", help="list and replay webhook deliveries").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    dl = deliveries.add_parser("list", parents=[common], help="list deliveries, newest first")
    dl.add_argument("--state", choices=["pending", "delivered", "dead"])
    dl.add_argument("--webhook", metavar="NAME")
    dl.add_argument("--limit", type=int, default=100)
    dl.add_argument("--cursor", help="next_cursor printed by the previous page")
    retry = deliveries.add_parser(
        "retry", parents=[common], help="replay a dead delivery, or with --all every dead one that matches"
    )
    retry.add_argument("delivery_id", type=int, nargs="?")
    retry.add_argument(
        "--all", action="store_true", help="every dead delivery (of --webhook, in a time range)"
    )
    retry.add_argument("--webhook", metavar="NAME", help="with --all: only this webhook's")
    retry.add_argument("--since", metavar="TIME", help="with --all: created at or after (RFC 3339)")
    retry.add_argument("--until", metavar="TIME", help="with --all: created before (RFC 3339)")
    webhooks = top.add_parser("webhooks", help="test configured webhooks").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    webhooks.add_parser(
        "test", parents=[common], help="send a signed webhook.test event to a webhook now"
    ).add_argument("name")
    return parser


def _endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    """The API base URL and token, from the flags, the environment and the configuration."""
    # --client names a token of the configuration: it beats the environment's, not an explicit --token.
    token = args.token or (None if args.client else os.environ.get("WATCHER_API_TOKEN")) or None
    url = args.url
    if args.client is not None and not args.config:
        raise ClientError("--client: needs the configuration (-c or $WATCHER_CONFIG)", EXIT_USAGE)
    if url is None or token is None:
        settings = _settings(args.config)
        if settings is not None:
            host, port = settings.api.host, settings.api.port
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            url = url or f"{settings.api.scheme}://{f'[{host}]' if ':' in host else host}:{port}"
            if token is None:
                token = _config_token(settings, args.client, args.config)
    url = (url or DEFAULT_URL).rstrip("/")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ClientError(f"--url: must be an http:// or https:// URL, not {url!r}", EXIT_USAGE)
    return url, token


def _config_token(settings: Any, client: str | None, settings_path: str = "the configuration") -> str | None:
    """The token the configuration gives this command: the named client's, or the first one."""
    clients = {c.name: c for c in settings.api.clients}
    if client is not None:
        if client not in clients:
            raise ClientError(f"--client: no [[api.clients]] named {client!r} in {settings_path}", EXIT_USAGE)
        return str(clients[client].secret())
    if settings.api.tokens:
        return str(settings.api.tokens[0].get_secret_value())
    return str(settings.api.clients[0].secret()) if settings.api.clients else None


def _settings(path: str | None) -> Any:
    if not path:
        return None
    from watcher.config import load_config
    from watcher.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise ClientError(f"configuration is invalid: {'; '.join(exc.problems)}", EXIT_USAGE) from None


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """What an https:// API is verified with: only `ca_file`'s certificates, else the system's trust store."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        raise ClientError(f"--ca-file: cannot read {ca_file}: {exc.strerror or exc}", EXIT_USAGE) from None
    except ssl.SSLError:
        raise ClientError(f"--ca-file: {ca_file} holds no PEM certificate", EXIT_USAGE) from None


def request(
    url: str,
    token: str | None,
    method: str,
    path: str,
    body: Any,
    timeout: float,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """One API call: the status and parsed JSON (None for 204); `ClientError` with the problem in one line.

    `context` verifies an https:// URL (default: the system's trust store)."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=data, headers=headers, method=method)  # noqa: S310
    try:
        # The scheme is http or https: `_endpoint` checked it.
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            raise ClientError(_problem_line(exc.code, exc.read())) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientError(f"cannot reach the daemon at {url}: {reason}") from None
    except (ValueError, http.client.InvalidURL):  # http.client's own message would quote the token
        raise ClientError(
            "--url or the token contains a control character or a space, which HTTP cannot carry",
            EXIT_USAGE,
        ) from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        raise ClientError(
            f"{url} answered {status} with a body that is not JSON; is it job-watcher?"
        ) from None


def _problem_line(status: int, raw: bytes) -> str:
    try:
        problem = json.loads(raw)
        title, detail = problem.get("title", ""), problem.get("detail", "")
    except (ValueError, AttributeError):
        title, detail = "", raw[:200].decode(errors="replace")
    return f"{status} {title}: {detail}".replace("\n", " ")


# -- output -----------------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned columns, long cells shortened with an ellipsis."""

    def cell(v: Any) -> str:
        s = "-" if v is None or v == "" else str(v)
        return s if len(s) <= _MAX_CELL else s[: _MAX_CELL - 1] + "…"

    cells = [list(header), *([cell(v) for v in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _time(value: str | None) -> str | None:
    return None if value is None else value.replace("T", " ").removesuffix("Z")[:19]


def _show(w: dict[str, Any]) -> str:
    fields = [
        ("job", w["job_id"]),
        ("state", w["state"]),
        ("workspace", w["workspace"]),
        ("sources", ",".join(w["sources"])),
        ("labels", _labels(w["labels"]) or "-"),
        ("webhooks", ",".join(w["webhooks"]) if w["webhooks"] is not None else "all"),
        ("polls", w["polls"]),
        ("registered", _time(w["registered_at"])),
        ("last polled", _time(w["last_polled_at"]) or "-"),
        ("next poll", _time(w["next_poll_at"]) or "-"),
        ("finished", _time(w["finished_at"]) or "-"),
        ("last error", w["last_error"] or "-"),
        ("failures", w["failures"]),
        ("last failure", w["last_failure"] or "-"),
        ("quarantined", _time(w["quarantined_at"]) or "-"),
    ]
    out = [f"{k + ':':<12} {v}" for k, v in fields]
    trans = [
        (_time(t["detected_at"]), t["type"], t["previous_status"], t["event_id"]) for t in w["transitions"]
    ]
    out += ["", table(trans, ["DETECTED", "EVENT", "FROM", "WEBHOOK-ID"])]
    out += ["", _deliveries_table(w["deliveries"])]
    return "\n".join(out)


def _deliveries_table(ds: Sequence[dict[str, Any]]) -> str:
    rows = [
        (d["id"], d["state"], d["webhook"], d["event_type"], d["job_id"], d["attempts"], d["last_error"])
        for d in ds
    ]
    return table(rows, ["ID", "STATE", "WEBHOOK", "EVENT", "JOB", "ATTEMPTS", "LAST ERROR"])


def _render(args: argparse.Namespace, status: int, answer: Any) -> str:
    if args.command == "watches":
        if args.action == "add":
            verb = "watching" if status == 201 else "already watched"
            return f"{verb} {answer['job_id']} (workspace {answer['workspace']}, state {answer['state']})"
        if args.action == "list":
            rows = [
                (
                    w["job_id"],
                    w["state"],
                    w["workspace"],
                    w["polls"],
                    _time(w["registered_at"]),
                    _labels(w["labels"]),
                )
                for w in answer["watches"]
            ]
            text = table(rows, ["JOB", "STATE", "WORKSPACE", "POLLS", "REGISTERED", "LABELS"])
            return text + (f"\nmore: --cursor {answer['next_cursor']}" if answer["next_cursor"] else "")
        if args.action == "show":
            return _show(answer)
        if args.action == "release":
            return (
                f"released {answer['job_id']} from quarantine; it is polled again (state {answer['state']})"
            )
        return f"stopped watching {args.job_id}"
    if args.command == "webhooks":
        outcome = "delivered" if answer["delivered"] else "NOT delivered"
        return (
            f"webhook {answer['webhook']}: test event {answer['event_id']} {outcome}: {answer['detail']}"
            f" ({answer['duration_s']:.3f} s)"
        )
    if args.action == "retry" and "retried" in answer:
        return f"{answer['retried']} dead deliveries are pending again"
    if args.action == "list":
        text = _deliveries_table(answer["deliveries"])
        return text + (f"\nmore: --cursor {answer['next_cursor']}" if answer["next_cursor"] else "")
    d = answer["delivery"]
    return f"delivery {d['id']} is {d['state']} again (webhook {d['webhook']}, webhook-id {d['event_id']})"


# -- commands ---------------------------------------------------------------------------------------------


def _call(args: argparse.Namespace) -> tuple[str, str, Any, dict[str, Any] | None]:
    """The method, path, body and query of the API call a command makes."""
    quote = urllib.parse.quote
    if args.command == "watches":
        if args.action == "add":
            labels = dict(_pair(v, "--label") for v in args.label)
            body: dict[str, Any] = {"job_id": args.job_id, "labels": labels}
            for key, value in (("workspace", args.workspace), ("webhooks", args.webhook)):
                if value is not None:
                    body[key] = value
            if args.max_watch_s is not None:
                body["max_watch_s"] = args.max_watch_s
            return "POST", "/v1/watches", body, None
        if args.action == "list":
            label = None if args.label is None else ":".join(_pair(args.label, "--label"))
            query = {"status": args.status, "label": label, "limit": args.limit, "cursor": args.cursor}
            return "GET", "/v1/watches", None, query
        path = f"/v1/watches/{quote(args.job_id, safe='')}"
        if args.action == "release":
            return "POST", f"{path}/release", None, None
        method = "GET" if args.action == "show" else "DELETE"
        return method, path, None, None
    if args.command == "webhooks":
        return "POST", f"/v1/webhooks/{quote(args.name, safe='')}/test", None, None
    if args.action == "list":
        query = {"state": args.state, "webhook": args.webhook, "limit": args.limit, "cursor": args.cursor}
        return "GET", "/v1/deliveries", None, query
    if args.all == (args.delivery_id is not None):
        raise ClientError("deliveries retry: give a delivery id, or --all (not both)", EXIT_USAGE)
    if args.all:
        bulk = {"webhook": args.webhook, "since": args.since, "until": args.until}
        return "POST", "/v1/deliveries/retry", {k: v for k, v in bulk.items() if v is not None}, None
    return "POST", f"/v1/deliveries/{args.delivery_id}/retry", None, None


def _pair(value: str, flag: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise ClientError(f"{flag}: expected KEY=VALUE, got {value!r}", EXIT_USAGE)
    return key, val


def client_main(argv: Sequence[str]) -> int:
    """Run one client command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        method, path, body, query = _call(args)
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        url, token = _endpoint(args)
        context = tls_context(args.ca_file) if url.startswith("https:") else None
        status, answer = request(url, token, method, path, body, args.timeout, context)
    except ClientError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        if answer is not None:
            print(json.dumps(answer, indent=2))
        failed_test = args.command == "webhooks" and not answer["delivered"]
        return EXIT_ERROR if failed_test else EXIT_OK
    print(_render(args, status, answer))
    if args.command == "webhooks" and not answer["delivered"]:
        return EXIT_ERROR  # the receiver did not take the test event: a script can tell
    return EXIT_OK
