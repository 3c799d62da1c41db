"""`watcher.proxies`: which forward proxy the environment names for an endpoint, decided once."""

from __future__ import annotations

import base64
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.proxies import Proxy, bypassed, proxy_for

ENV = {
    "https": "http://proxy.corp:3128",
    "http": "http://proxy.corp:3128",
    "no": "localhost,.internal,10.1.2.3",
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/a", "http://proxy.corp:3128"),
        ("http://hooks.example.com/a", "http://proxy.corp:3128"),
        ("http://localhost:8080/api/v2", None),  # NO_PROXY: a name
        ("https://jobs.internal/api", None),  # a domain suffix, with its leading dot
        ("https://a.b.internal/api", None),
        ("https://notinternal/api", "http://proxy.corp:3128"),  # a suffix matches at a dot only
        ("https://10.1.2.3:8443/x", None),
        ("https://10.1.2.30/x", "http://proxy.corp:3128"),
    ],
)
def test_proxy_for_follows_no_proxy(url: str, expected: str | None) -> None:
    """The scheme's proxy, unless NO_PROXY names the host."""
    got = proxy_for(url, ENV)
    assert (got.url if got else None) == expected


def test_no_proxy_variable_for_the_scheme_means_direct() -> None:
    """Only HTTPS_PROXY set: http:// URLs go direct; nothing set: everything does."""
    assert proxy_for("http://a.example/", {"https": "http://p:1"}) is None
    assert proxy_for("https://a.example/", {"https": "http://p:1"}) == Proxy("http://p:1")
    assert proxy_for("https://a.example/", {}) is None
    assert proxy_for("https://a.example/", {"https": "http://p:1", "no": "*"}) is None


def test_credentials_become_a_header_and_never_show() -> None:
    """user:password in the proxy URL: a Proxy-Authorization header, not part of the URL or the repr."""
    got = proxy_for("https://a.example/", {"https": "http://us%40er:pa%3Ass-S3CRET@proxy.corp:3128"})
    assert got is not None and got.url == "http://proxy.corp:3128"
    assert got.headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"us@er:pa:ss-S3CRET").decode()}
    assert "S3CRET" not in repr(got) and repr(got) == "Proxy('proxy.corp:3128')"
    assert got.request_kwargs() == {"proxy": "http://proxy.corp:3128", "proxy_headers": got.headers}
    assert proxy_for("https://a.example/", {"https": "http://p:1"}).request_kwargs()["proxy_headers"] is None  # type: ignore[union-attr]


def test_a_proxy_without_scheme_is_http_and_an_https_proxy_is_ignored() -> None:
    """`proxy.corp:3128` means http://; an https:// proxy is not supported by aiohttp, so none is used."""
    assert proxy_for("https://a.example/", {"https": "proxy.corp:3128"}) == Proxy("http://proxy.corp:3128")
    assert proxy_for("https://a.example/", {"https": "https://proxy.corp:3128"}) is None


NAMES = st.sampled_from(["localhost", "a.example", "b.a.example", "example", "10.0.0.1", "x.internal"])


@given(
    host=NAMES,
    port=st.sampled_from([None, 443, 8080]),
    entries=st.lists(
        st.one_of(NAMES, NAMES.map(lambda n: "." + n), NAMES.map(lambda n: n + ":8080"), st.just("*")),
        max_size=4,
    ),
)
def test_bypassed_agrees_with_urllib(host: str, port: int | None, entries: list[str]) -> None:
    """The NO_PROXY rule is urllib's: the same verdict as `proxy_bypass_environment` on host[:port]."""
    no_proxy = ",".join(entries)
    target = host if port is None else f"{host}:{port}"
    expected = urllib.request.proxy_bypass_environment(target, {"no": no_proxy})  # type: ignore[attr-defined]
    assert bypassed(host, port, no_proxy) == bool(expected)
