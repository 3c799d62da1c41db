"""The address guard on real connections: aiohttp clients through the guarded connector to loopback servers.

Every server here listens on a loopback address; the guard is what stops the client from reaching it, and
`allow_networks` is what lets it through. A test resolver stands in for DNS where a hostname is needed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from watcher.delivery.guard import AddressGuard, BlockedAddress, find_blocked, guarded_connector
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import WebhookSender
from watcher.models import Delivery, DeliveryOutcome, DeliveryState, Event

Serve = Callable[..., Awaitable["Server"]]
Sessions = Callable[..., aiohttp.ClientSession]
SECRET = "whsec_YWRkcmVzcy1ndWFyZC10ZXN0LWtleQ=="


def ipv6_loopback_works() -> bool:
    """Whether ::1 can be bound here (some containers have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback (::1) on this host")


@dataclass
class Server:
    """A loopback HTTP server that records every request; /redirect answers 307 to `location`."""

    host: str
    port: int = 0
    location: str = ""
    hits: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self) -> Server:
        """Listen on `host` (`port` 0: a free one)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if request.path == "/redirect":
            raise web.HTTPTemporaryRedirect(self.location)
        return web.Response(text="ok")


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start loopback servers; all are stopped after the test."""
    started: list[Server] = []

    async def start(host: str = "127.0.0.1", port: int = 0) -> Server:
        server = await Server(host, port).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.runner is not None:
            await server.runner.cleanup()


class TestResolver(AbstractResolver):
    """DNS for tests: each lookup of a name returns the next answer in its script (the last one repeats)."""

    __test__ = False  # not a pytest test class

    def __init__(self, answers: dict[str, Sequence[Sequence[str]]]) -> None:
        self.answers = {name: list(script) for name, script in answers.items()}
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The next scripted answer for `host`; OSError for a name without a script."""
        self.calls.append(host)
        script = self.answers.get(host)
        if not script:
            raise OSError(f"no test answer for {host}")
        addresses = script.pop(0) if len(script) > 1 else script[0]
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        """Nothing to close."""


@pytest.fixture
async def sessions() -> AsyncIterator[Sessions]:
    """Build client sessions through a guarded connector; all are closed after the test."""
    opened: list[aiohttp.ClientSession] = []

    def make(
        allow: Sequence[str] = (), resolver: AbstractResolver | None = None, **connector: Any
    ) -> aiohttp.ClientSession:
        guard = AddressGuard.from_config(allow, require_https=False)
        session = aiohttp.ClientSession(
            connector=guarded_connector(guard, resolver=resolver, **connector), trust_env=False
        )
        opened.append(session)
        return session

    yield make
    for session in opened:
        await session.close()


async def status_of(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    """POST to `url` and return the status code."""
    async with session.post(url, data=b"{}", **kwargs) as resp:
        return resp.status


async def blocked(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> BlockedAddress:
    """POST to `url`, which must fail with a BlockedAddress behind aiohttp's own error."""
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await status_of(session, url, **kwargs)
    found = find_blocked(info.value)
    assert found is not None, f"not a BlockedAddress: {info.value!r}"
    return found


class TestResolvedHostnames:
    """Hostnames: the guarded resolver filters what DNS answers."""

    async def test_hostname_resolving_to_loopback_is_blocked_then_allowed(
        self, serve: Serve, sessions: Sessions
    ) -> None:
        """A name that resolves to 127.0.0.1 is blocked; with 127.0.0.0/8 allowed the same request arrives."""
        server = await serve()
        url = f"http://callback.test:{server.port}/hook/secret-path"
        resolver = TestResolver({"callback.test": [["127.0.0.1"]]})

        err = await blocked(sessions(resolver=resolver), url)
        assert (err.address, err.reason, err.hostname) == ("127.0.0.1", "loopback", "callback.test")
        assert server.hits == []

        assert await status_of(sessions(["127.0.0.0/8"], resolver=resolver), url) == 200
        assert server.hits == ["/hook/secret-path"]

    async def test_error_text_keeps_the_path_out(self, serve: Serve, sessions: Sessions) -> None:
        """What a blocked delivery would log names host and address, never the URL path."""
        server = await serve()
        resolver = TestResolver({"callback.test": [["127.0.0.1"]]})
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await status_of(sessions(resolver=resolver), f"http://callback.test:{server.port}/s3cr3t")
        assert "callback.test resolves to 127.0.0.1, which is loopback" in str(info.value)
        assert "s3cr3t" not in str(info.value)

    async def test_dns_rebinding_does_not_get_through(self, serve: Serve, sessions: Sessions) -> None:
        """Each connection is checked on what the name resolves to then: a rebound answer is blocked."""
        allowed = await serve("127.0.0.1")
        internal = await serve("127.0.0.2", allowed.port)
        resolver = TestResolver(
            {"rebind.test": [["127.0.0.1"], ["127.0.0.2"], ["127.0.0.2", "127.0.0.1"], ["127.0.0.2"]]}
        )
        session = sessions(["127.0.0.1/32"], resolver=resolver, use_dns_cache=False, force_close=True)
        url = f"http://rebind.test:{allowed.port}/hook"

        assert await status_of(session, url) == 200  # first answer: the allowed address
        err = await blocked(session, url)  # rebound to the internal one
        assert err.address == "127.0.0.2"
        assert await status_of(session, url) == 200  # mixed answer: only the allowed address is used
        await blocked(session, url)
        assert len(allowed.hits) == 2
        assert internal.hits == []
        assert len(resolver.calls) == 4

    async def test_legacy_spellings_resolve_and_are_blocked(self, serve: Serve, sessions: Sessions) -> None:
        """aiohttp hands 0x7f.1 and localhost to getaddrinfo, which says 127.0.0.1: blocked unless allowed."""
        server = await serve()
        for host in ("0x7f.1", "0x7f.0.0.1", "0x7f000001", "localhost"):
            err = await blocked(sessions(), f"http://{host}:{server.port}/hook")
            assert (err.address, err.reason, err.hostname) == ("127.0.0.1", "loopback", host)
        assert server.hits == []
        assert await status_of(sessions(["127.0.0.0/8"]), f"http://0x7f.1:{server.port}/hook") == 200
        assert server.hits == ["/hook"]

    async def test_numeric_legacy_spellings_are_refused_by_aiohttp(
        self, serve: Serve, sessions: Sessions
    ) -> None:
        """aiohttp itself refuses all-digit non-canonical IPv4 hosts (2130706433, 0177.0.0.1, 127.1)."""
        server = await serve()
        for host in ("2130706433", "0177.0.0.1", "127.1", "127.0.0.1."):
            with pytest.raises(aiohttp.ClientError):
                await status_of(sessions(["127.0.0.0/8"]), f"http://{host}:{server.port}/hook")
        assert server.hits == []


class TestLiteralAddresses:
    """IP literals: aiohttp never asks a resolver, so the socket factory is what checks them."""

    @pytest.mark.parametrize(
        ("host", "server_host", "allow"),
        [
            ("127.0.0.1", "127.0.0.1", "127.0.0.0/8"),
            ("127.0.0.2", "127.0.0.2", "127.0.0.2/32"),
            pytest.param("[::1]", "::1", "::1/128", marks=needs_ipv6),
        ],
    )
    async def test_literal_blocked_then_allowed(
        self,
        serve: Serve,
        sessions: Sessions,
        host: str,
        server_host: str,
        allow: str,
    ) -> None:
        """A literal loopback URL never connects, until its network is allowed."""
        server = await serve(server_host)
        url = f"http://{host}:{server.port}/hook"
        resolver = TestResolver({})
        err = await blocked(sessions(resolver=resolver), url)
        assert err.reason == "loopback"
        assert server.hits == []
        assert await status_of(sessions([allow], resolver=resolver), url) == 200
        assert server.hits == ["/hook"]
        assert resolver.calls == []

    @pytest.mark.parametrize(
        ("host", "reason"),
        [
            ("[::ffff:127.0.0.1]", "IPv4-mapped form of 127.0.0.1"),
            ("[::ffff:7f00:1]", "IPv4-mapped form of 127.0.0.1"),
            ("[::127.0.0.1]", "IPv4-compatible form of 127.0.0.1"),
            ("[64:ff9b::7f00:1]", "NAT64 form of 127.0.0.1"),
            ("[2002:7f00:1::1]", "6to4 form of 127.0.0.1"),
            ("[2001:0:7f00:1::1]", "Teredo server of 127.0.0.1"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),  # Linux connects 0.0.0.0 to the local host
            ("[::]", "unspecified"),
            ("100.64.0.1", "CGNAT"),
            ("198.18.0.1", "private"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("[fd00::1]", "private"),
            ("[fe80::1%25lo]", "link-local"),
        ],
    )
    async def test_refused_literals_never_connect(
        self,
        serve: Serve,
        sessions: Sessions,
        host: str,
        reason: str,
    ) -> None:
        """Each refused literal is stopped before its socket is opened, with the reason named."""
        server = await serve()
        err = await blocked(sessions(), f"http://{host}:{server.port}/hook")
        assert reason in err.reason
        assert server.hits == []

    async def test_unspecified_address_reaches_localhost_without_the_guard(self, serve: Serve) -> None:
        """Why 0.0.0.0 is refused: an unguarded client reaches a loopback server through it."""
        server = await serve("127.0.0.1")
        async with aiohttp.ClientSession(trust_env=False) as session:
            assert await status_of(session, f"http://0.0.0.0:{server.port}/hook") == 200
        assert server.hits == ["/hook"]


class TestAiohttpHooks:
    """Guards on the aiohttp behaviour the design relies on; if one fails, re-read docs/callbacks-guard.md."""

    async def test_ip_literals_bypass_the_resolver(self, serve: Serve) -> None:
        """aiohttp connects to an IP literal without asking its resolver: a resolver alone is no guard."""
        server = await serve()
        resolver = TestResolver({})
        connector = aiohttp.TCPConnector(resolver=resolver)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            assert await status_of(session, f"http://127.0.0.1:{server.port}/hook") == 200
        assert resolver.calls == []

    async def test_socket_factory_sees_every_connection(self, serve: Serve) -> None:
        """The socket factory is called with the address of every socket, for literals and resolved names."""
        server = await serve()
        seen: list[str] = []

        def factory(addr_info: aiohttp.AddrInfoType) -> socket.socket:
            seen.append(addr_info[4][0])
            return socket.socket(addr_info[0], addr_info[1], addr_info[2])

        resolver = TestResolver({"callback.test": [["127.0.0.1"]]})
        guard = AddressGuard.from_config(["127.0.0.0/8"])
        connector = guarded_connector(guard, resolver=resolver, socket_factory=factory, force_close=True)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            assert await status_of(session, f"http://127.0.0.1:{server.port}/a") == 200
            assert await status_of(session, f"http://callback.test:{server.port}/b") == 200
        assert seen == ["127.0.0.1", "127.0.0.1"]
        assert server.hits == ["/a", "/b"]

    async def test_unrelated_connection_errors_are_not_blocked(self, sessions: Sessions) -> None:
        """A refused connection to an allowed address stays an ordinary (retryable) connection error."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await status_of(sessions(["127.0.0.0/8"]), f"http://127.0.0.1:{closed_port}/hook")
        assert find_blocked(info.value) is None


class TestRedirects:
    """A redirect to a refused address is never followed."""

    async def test_sender_does_not_follow_a_redirect_to_a_blocked_host(
        self, serve: Serve, sessions: Sessions
    ) -> None:
        """The webhook sender reports a 3xx as not followed; the internal server gets nothing."""
        public = await serve("127.0.0.1")
        internal = await serve("127.0.0.2")
        public.location = f"http://127.0.0.2:{internal.port}/internal"
        session = sessions(["127.0.0.1/32"])
        target = WebhookTarget("callback", f"http://127.0.0.1:{public.port}/redirect", (SECRET,), frozenset())
        event = Event("evt_1", "job-1", "acme", "job.failed", time.time(), {"type": "job.failed", "data": {}})
        delivery = Delivery(1, event, "callback", DeliveryState.PENDING, 0, 0.0, 0.0)

        result = await WebhookSender(session).send(target, delivery)
        assert result.kind is DeliveryOutcome.RETRY
        assert result.status_code == 307
        assert "redirect not followed" in result.detail
        assert public.hits == ["/redirect"]
        assert internal.hits == []

    async def test_a_client_that_follows_redirects_is_still_blocked(
        self, serve: Serve, sessions: Sessions
    ) -> None:
        """Even a client that follows redirects cannot reach the blocked target through the guard."""
        public = await serve("127.0.0.1")
        internal = await serve("127.0.0.2")
        for location in (
            f"http://127.0.0.2:{internal.port}/internal",
            f"http://0x7f.0.0.2:{internal.port}/x",
        ):
            public.location = location
            err = await blocked(sessions(["127.0.0.1/32"]), f"http://127.0.0.1:{public.port}/redirect")
            assert err.address == "127.0.0.2"
        assert public.hits == ["/redirect", "/redirect"]
        assert internal.hits == []
