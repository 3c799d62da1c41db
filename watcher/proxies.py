"""The forward proxy the environment names for a URL (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), decided
once per endpoint when the daemon builds its clients.

aiohttp's own `trust_env=True` decides per request, and each decision reads the environment and `~/.netrc`
in a worker thread: a cost on every poll, and a `~/.netrc` entry for the upstream's host would add Basic
credentials that clash with its bearer token. Polls and webhook deliveries go to URLs known at start-up,
so the decision is made here once, with the same rules (`urllib.request`'s: upper- or lower-case names,
`NO_PROXY` names, domain suffixes and `*`). Callbacks never use it (the address guard must see the address
actually connected).
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Proxy:
    """An HTTP forward proxy for one endpoint; `headers` (Proxy-Authorization) are secret."""

    url: str = field(repr=False)  # without credentials, but still only shown as host:port
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"Proxy({self.address!r})"

    @property
    def address(self) -> str:
        """host:port of the proxy, for logs."""
        return urlsplit(self.url).netloc

    def request_kwargs(self) -> dict[str, Any]:
        """The `proxy=`/`proxy_headers=` arguments of an aiohttp request through this proxy."""
        return {"proxy": self.url, "proxy_headers": dict(self.headers) or None}


def environment_proxies() -> dict[str, str]:
    """The proxy variables of this process's environment, keyed by scheme (`no` for NO_PROXY)."""
    return urllib.request.getproxies_environment()


def proxy_for(url: str, proxies: Mapping[str, str]) -> Proxy | None:
    """The proxy `proxies` (as `environment_proxies` returns them) name for `url`, or None to go direct.

    None too for a proxy that is not `http://` (aiohttp reaches proxies over plain HTTP only).
    """
    parts = urlsplit(url)
    given = proxies.get(parts.scheme)
    if not given or parts.hostname is None:
        return None
    if bypassed(parts.hostname, parts.port, proxies.get("no", "")):
        return None
    proxy = urlsplit(given if "://" in given else f"http://{given}")
    if proxy.scheme != "http" or proxy.hostname is None:
        return None
    netloc = proxy.netloc.rpartition("@")[2]
    headers = {}
    if proxy.username is not None:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return Proxy(f"http://{netloc}", headers)


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """True if NO_PROXY (`no_proxy`, comma-separated) names `host`: `*`, the host itself, `host:port`, or a
    domain it ends in (a leading dot is optional), compared without case, as `urllib.request` does."""
    if no_proxy.strip() == "*":
        return True
    host = host.lower()
    with_port = f"{host}:{port}" if port is not None else host
    for entry in no_proxy.split(","):
        name = entry.strip().lstrip(".").lower()
        if not name:
            continue
        if name in (host, with_port) or host.endswith("." + name) or with_port.endswith("." + name):
            return True
    return False
