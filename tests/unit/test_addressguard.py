"""Tests of the SSRF address guard's pure parts: address verdicts, IPv4 spellings, URL checks and masking."""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from watcher.delivery.guard import (
    MASK,
    AddressGuard,
    CallbackUrlError,
    check_url,
    literal_address,
    mask_url,
    parse_address,
    parse_ipv4,
    parse_networks,
    refusal_reason,
)

# 127.0.0.1 in fullwidth digits, which IDNA (UTS 46) maps to ASCII; escaped so the source stays ASCII.
FULLWIDTH_LOOPBACK = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"

# Every form the guard must refuse with an empty allow list, and a word its reason must contain.
REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fd00::1", "private"),  # unique-local fc00::/7
    ("fc00::1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "private"),  # 0.0.0.0/8, "this network"
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "private"),  # documentation (TEST-NET-1)
    ("198.51.100.7", "private"),  # TEST-NET-2
    ("203.0.113.9", "private"),  # TEST-NET-3
    ("2001:db8::1", "private"),  # IPv6 documentation
    ("198.18.0.1", "private"),  # benchmarking 198.18.0.0/15
    ("198.19.255.1", "private"),
    ("192.0.0.1", "private"),  # IETF protocol assignments
    ("192.0.0.8", "IETF protocol assignment"),  # 3.11.7 calls it global
    ("192.0.0.9", "IETF protocol assignment"),
    ("3fff::1", "documentation"),  # RFC 9637, global for 3.11.7
    ("5f00::1", "reserved"),
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, which is loopback"),
    ("::ffff:7f00:1", "IPv4-mapped form of 127.0.0.1"),
    ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254, which is link-local"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),  # a public one too: the URL must name 8.8.8.8 itself
    ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1"),
    ("::8.8.8.8", "IPv4-compatible"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1, which is loopback"),
    ("64:ff9b::10.0.0.1", "NAT64 form of 10.0.0.1, which is private"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    ("64:ff9b:1:ffff::1", "local-use NAT64"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
    ("2002:a00:1:1::1", "6to4 form of 10.0.0.1"),
    ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254"),
    # Teredo 2001:0::/32: server in bits 32-63, client (inverted) in the last 32 bits
    ("2001:0:7f00:1::", "Teredo server of 127.0.0.1"),
    ("2001:0:808:808:0:0:80ff:fefe", "Teredo client of 127.0.1.1, which is loopback"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo client of 192.0.2.45"),  # the RFC 4380 example
    ("2001:0:808:808::f7f7:f7f7", "private"),  # public server and client: 2001::/32 is still not global
    ("100::1", "private"),  # discard-only
    ("not-an-address", "not an IP address"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above
    "172.32.0.1",  # just above 172.16.0.0/12
    "198.20.0.1",  # just above benchmarking
    "192.0.1.1",  # just above 192.0.0.0/24
    "223.255.255.255",  # just below multicast
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "64:ff9b::808:808",  # NAT64 of a public address: how IPv6-only hosts reach IPv4 receivers
    "64:ff9b::1.1.1.1",
    "2002:808:808::1",  # 6to4 of a public address
]


class TestRefusalReason:
    """The verdict on one address, with and without `allow_networks`."""

    @pytest.mark.parametrize(("address", "reason"), REFUSED)
    def test_refused(self, address: str, reason: str) -> None:
        """Each refused form is refused with a reason naming its range."""
        got = refusal_reason(address)
        assert got is not None
        assert reason in got

    @pytest.mark.parametrize("address", ALLOWED)
    def test_allowed(self, address: str) -> None:
        """Public addresses, and NAT64/6to4 forms of public addresses, are allowed."""
        assert refusal_reason(address) is None

    @pytest.mark.parametrize(
        ("address", "allow"),
        [
            ("127.0.0.1", "127.0.0.0/8"),
            ("10.1.2.3", "10.0.0.0/8"),
            ("169.254.169.254", "169.254.169.254/32"),
            ("fd00::1", "fd00::/8"),
            ("fe80::1%eth0", "fe80::/10"),
            ("224.0.0.1", "224.0.0.0/4"),
            ("64:ff9b::a00:1", "10.0.0.0/8"),  # NAT64 to an allowed IPv4 network
            ("::ffff:127.0.0.1", "::ffff:0:0/96"),  # only when the mapped range itself is listed
        ],
    )
    def test_allow_networks_allow(self, address: str, allow: str) -> None:
        """An address inside allow_networks is allowed whatever its range."""
        assert refusal_reason(address) is not None
        assert refusal_reason(address, parse_networks([allow])) is None

    @pytest.mark.parametrize(
        ("address", "allow"),
        [
            ("127.0.0.2", "127.0.0.1/32"),
            ("10.0.0.1", "192.168.0.0/16"),
            ("::ffff:127.0.0.1", "127.0.0.0/8"),  # the mapped spelling is refused even so
            ("fd00::1", "10.0.0.0/8"),
            ("127.0.0.1", "::/0"),  # an IPv6 network never covers an IPv4 address
        ],
    )
    def test_allow_networks_are_exact(self, address: str, allow: str) -> None:
        """Outside every allowed network, the usual verdict holds."""
        assert refusal_reason(address, parse_networks([allow])) is not None

    def test_parse_networks_names_bad_entry(self) -> None:
        """A bad allow_networks entry is a ValueError naming it (config turns it into exit 2)."""
        with pytest.raises(ValueError, match=r"'10\.0\.0\.1/8'"):
            parse_networks(["127.0.0.0/8", "10.0.0.1/8"])
        with pytest.raises(ValueError, match="'nope'"):
            AddressGuard.from_config(["nope"])

    def test_zone_is_dropped(self) -> None:
        """An IPv6 zone says where, not what: the address is judged without it."""
        assert parse_address("fe80::1%eth0") == IPv6Address("fe80::1")
        assert parse_address("[fe80::1%25eth0]") == IPv6Address("fe80::1")


# IPv4 spellings: (host as written in a URL, the address it names)
SPELLINGS = [
    ("2130706433", "127.0.0.1"),  # one decimal number
    ("017700000001", "127.0.0.1"),  # one octal number
    ("0x7f000001", "127.0.0.1"),  # one hex number
    ("0177.0.0.1", "127.0.0.1"),  # octal octet
    ("0177.0000.0000.0001", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0X7F.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),  # a.b: b fills three bytes
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),  # a.b.c: c fills two bytes
    ("127.0.0.1.", "127.0.0.1"),  # trailing dot
    ("127.0.0.1..", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"),  # the URL Standard reads an empty hex number as 0; glibc refuses it
    ("169.254.43518", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("8.8.8.8", "8.8.8.8"),
]


class TestLiteralAddress:
    """Which address a URL host names, in every spelling a resolver would accept."""

    @pytest.mark.parametrize(("host", "address"), SPELLINGS)
    def test_ipv4_spellings(self, host: str, address: str) -> None:
        """Legacy IPv4 spellings name the same address inet_aton(3) gives them."""
        assert literal_address(host) == IPv4Address(address)
        if not host.endswith(".") and host != "0x":
            assert socket.inet_aton(host) == IPv4Address(address).packed

    @pytest.mark.parametrize(
        ("host", "address"),
        [
            ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
            ("::FFFF:7F00:1", "::ffff:7f00:1"),
            ("fe80::1%eth0", "fe80::1"),
            ("fe80::1%25eth0", "fe80::1"),
            ("0:0:0:0:0:0:0:1", "::1"),
            (FULLWIDTH_LOOPBACK, "127.0.0.1"),
            ("127\u30020\u30020\u30021", "127.0.0.1"),  # ideographic full stops
        ],
    )
    def test_other_spellings(self, host: str, address: str) -> None:
        """IPv6 in any case or length, with zone or brackets, and IDNA-mapped digits are recognised."""
        assert literal_address(host) == ip_address(address)

    @pytest.mark.parametrize(
        "host", ["example.com", "callback.example.", "xn--bcher-kva.de", "a1.b2", "0x7g"]
    )
    def test_hostnames(self, host: str) -> None:
        """A hostname is not an address (it is checked when it resolves)."""
        assert literal_address(host) is None

    @pytest.mark.parametrize(
        "host", ["256.0.0.1", "1.2.3.4.5", "1.2.3.256", "example.123", "08.0.0.1", "1..1"]
    )
    def test_invalid_numeric_hosts(self, host: str) -> None:
        """A host that ends in a number but is no address is an error, not a hostname."""
        with pytest.raises(ValueError, match="ends in a number"):
            parse_ipv4(host)


class TestCheckUrl:
    """The registration check: scheme, host and literal addresses."""

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("http://127.0.0.1/hook", "127.0.0.1 is loopback"),
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
            ("http://[::ffff:127.0.0.1]/", "IPv4-mapped form of 127.0.0.1"),
            ("http://[::ffff:7f00:1]:8080/", "IPv4-mapped form of 127.0.0.1"),
            ("http://0.0.0.0/", "0.0.0.0 is unspecified"),
            ("http://[::]/", ":: is unspecified"),
            ("http://2130706433/", "127.0.0.1 is loopback"),
            ("http://0177.0.0.1/", "127.0.0.1 is loopback"),
            ("http://0x7f.0.0.1/", "127.0.0.1 is loopback"),
            ("http://0x7f.1/", "127.0.0.1 is loopback"),
            ("http://127.1/", "127.0.0.1 is loopback"),
            ("http://127.0.0.1./", "127.0.0.1 is loopback"),
            (f"http://{FULLWIDTH_LOOPBACK}/", "127.0.0.1 is loopback"),
            ("http://[64:ff9b::7f00:1]/", "NAT64 form of 127.0.0.1"),
            ("http://[64:ff9b::127.0.0.1]/", "NAT64 form of 127.0.0.1"),
            ("http://[2002:7f00:1::]/", "6to4 form of 127.0.0.1"),
            ("http://[2001:0:7f00:1::]/", "Teredo server of 127.0.0.1"),
            ("http://[2001:0:808:808:0:0:80ff:fefe]/", "Teredo client of 127.0.1.1"),
            ("http://100.64.0.1/", "CGNAT"),
            ("http://198.18.0.1/", "private"),
            ("http://224.0.0.1/", "multicast"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://[fd00::1]/", "private"),
            ("http://[fe80::1%25eth0]/", "link-local"),
            ("http://[fe80::1%eth0]/", "link-local"),
            ("http://user:pw@10.0.0.1:8443/x?token=1", "10.0.0.1 is private"),
        ],
    )
    def test_refused_address(self, url: str, message: str) -> None:
        """A literal address in a refused range, in any spelling, is refused naming the address and range."""
        with pytest.raises(CallbackUrlError) as info:
            check_url(url, require_https=False)
        assert message in str(info.value)
        assert str(info.value).endswith("callbacks.allow_networks can allow it")

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("http://256.0.0.1/", "ends in a number"),
            ("http://%31%32%37.0.0.1/", "ends in a number"),
            # percent-encoded: another client may decode it
            ("http://%6c%6fcalhost/", "not a valid hostname"),
            ("http://a b.example/", "not a valid hostname"),
            ("ftp://example.com/", "absolute https URL"),
            ("file:///etc/passwd", "absolute https URL"),
            ("/relative/path", "absolute https URL"),
            ("http:example.com", "absolute https URL"),
            ("https://example.com:99999/", "not a valid URL"),
            ("https://example.com:0/", "port 0"),
            ("http://127.0.0.1\\@example.com/", "not a valid URL"),
        ],
    )
    def test_refused_malformed(self, url: str, message: str) -> None:
        """A URL that is not an absolute http(s) URL with a valid host is refused with a one-line reason."""
        with pytest.raises(CallbackUrlError) as info:
            check_url(url, require_https=False)
        assert message in str(info.value)
        assert "\n" not in str(info.value)

    def test_https_required_by_default(self) -> None:
        """Plain http is refused unless require_https is off."""
        with pytest.raises(CallbackUrlError, match=r"must use https \(callbacks.require_https is on\)"):
            check_url("http://example.com/hook")
        assert check_url("http://example.com/hook", require_https=False).host == "example.com"
        assert check_url("https://example.com/hook").host == "example.com"

    @pytest.mark.parametrize(
        "url",
        [
            "https://example.com/hook",
            "https://user:secret@example.com:8443/a/b?x=1#frag",  # userinfo is allowed, only masked
            "https://8.8.8.8/",
            "https://[2606:4700:4700::1111]/",
            "https://[64:ff9b::808:808]/",
            "https://bücher.example/",
            "https://callback.example./",
            "HTTPS://EXAMPLE.COM/",
            "https://localhost/",  # a hostname: refused when it resolves, not here
        ],
    )
    def test_allowed(self, url: str) -> None:
        """Public literals and any hostname pass registration."""
        assert check_url(url).scheme == "https"

    def test_allow_networks(self) -> None:
        """A literal inside allow_networks passes; the guard object applies its own settings."""
        guard = AddressGuard.from_config(["127.0.0.0/8"], require_https=False)
        assert guard.check_url("http://127.0.0.1:8080/hook").port == 8080
        assert guard.check_url("http://0x7f.1/").host == "0x7f.1"
        with pytest.raises(CallbackUrlError, match="IPv4-mapped"):
            guard.check_url("http://[::ffff:127.0.0.1]/")
        with pytest.raises(CallbackUrlError, match=r"10\.0\.0\.1 is private"):
            guard.check_url("http://10.0.0.1/")


class TestMaskUrl:
    """What API answers show of a callback URL."""

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("https://example.com/hook", "https://example.com/hook"),
            ("https://example.com:8443/a/b", "https://example.com:8443/a/b"),
            (
                "https://user:secret@example.com/x?token=abc#frag",
                f"https://{MASK}@example.com/x?{MASK}#{MASK}",
            ),
            ("https://user@example.com/", f"https://{MASK}@example.com/"),
            ("https://:pw@example.com/", f"https://{MASK}@example.com/"),
            ("https://[2606:4700::1111]:443/", "https://[2606:4700::1111]:443/"),
            ("http://bücher.example/", "http://xn--bcher-kva.example/"),
            ("not a url", MASK),
            ("https://example.com:99999/", MASK),
        ],
    )
    def test_mask(self, url: str, shown: str) -> None:
        """Scheme, host, port and path are shown; userinfo, query and fragment are masked."""
        assert mask_url(url) == shown
        for secret in ("secret", "token", "abc", "pw"):
            assert secret not in mask_url(url)


# -- properties against ipaddress's own classification -------------------------------------------------------

# How inet_aton(3) reads one part of an IPv4 host: decimal, octal (leading 0) or hex (0x / 0X).
NUMBER_STYLES: list[Callable[[int], str]] = [str, "0{:o}".format, "0x{:x}".format, "0X{:X}".format]

v4s = st.one_of(st.ip_addresses(v=4), st.integers(0, 2**32 - 1).map(IPv4Address))
v6s = st.ip_addresses(v=6)


def nat64(v4: IPv4Address) -> IPv6Address:
    """The NAT64 well-known-prefix form of `v4`."""
    return IPv6Address(int(IPv6Address("64:ff9b::")) | int(v4))


def sixtofour(v4: IPv4Address, rest: int) -> IPv6Address:
    """A 6to4 address (2002:V4::/48) with any subnet and interface bits."""
    return IPv6Address((0x2002 << 112) | (int(v4) << 80) | (rest & (2**80 - 1)))


def teredo(server: IPv4Address, client: IPv4Address, middle: int) -> IPv6Address:
    """A Teredo address: 2001:0::/32, server, flags and port, client inverted."""
    return IPv6Address(
        (0x20010000 << 96) | (int(server) << 64) | ((middle & 0xFFFFFFFF) << 32) | (~int(client) & 0xFFFFFFFF)
    )


def not_refused_by_properties(a: IPv4Address | IPv6Address) -> bool:
    """What ipaddress itself says every allowed address must be."""
    return (
        a.is_global
        and not a.is_private
        and not a.is_loopback
        and not a.is_link_local
        and not a.is_multicast
        and not a.is_unspecified
        and not (isinstance(a, IPv6Address) and a.is_site_local)
        and (not a.is_reserved or a in IPv6Network("64:ff9b::/96"))
    )


class TestProperties:
    """Hypothesis over generated addresses, checked against ipaddress's own classification."""

    @given(st.one_of(v4s, v6s))
    @example(IPv4Address("224.0.0.1"))  # is_global on 3.11, refused as multicast
    @example(IPv6Address("ff02::1"))
    @example(IPv6Address("64:ff9b:1::1"))
    def test_allowed_implies_global(self, a: IPv4Address | IPv6Address) -> None:
        """Whatever the guard allows, ipaddress calls global and none of the refused kinds."""
        if refusal_reason(a) is None:
            assert not_refused_by_properties(a)

    @given(v4s)
    def test_nat64_follows_ipv4(self, v4: IPv4Address) -> None:
        """The NAT64 form of an IPv4 address has exactly the IPv4 address's verdict."""
        assert (refusal_reason(nat64(v4)) is None) == (refusal_reason(v4) is None)

    @given(v4s, st.integers(0, 2**80 - 1))
    def test_sixtofour_follows_ipv4(self, v4: IPv4Address, rest: int) -> None:
        """A 6to4 address is allowed exactly when its embedded IPv4 address is."""
        a = sixtofour(v4, rest)
        assert a.sixtofour == v4
        assert (refusal_reason(a) is None) == (refusal_reason(v4) is None)

    @given(v4s, v4s, st.integers(0, 2**32 - 1))
    def test_teredo_never_allowed(self, server: IPv4Address, client: IPv4Address, middle: int) -> None:
        """Teredo addresses are refused, naming a refused embedded address when there is one."""
        a = teredo(server, client, middle)
        assert a.teredo == (server, client)
        reason = refusal_reason(a)
        assert reason is not None
        if refusal_reason(server) is not None:
            assert f"Teredo server of {server}" in reason
        elif refusal_reason(client) is not None:
            assert f"Teredo client of {client}" in reason

    @given(v4s)
    def test_mapped_and_compatible_never_allowed(self, v4: IPv4Address) -> None:
        """IPv4-mapped and IPv4-compatible spellings are refused, whatever address they carry."""
        mapped = IPv6Address(f"::ffff:{v4}")
        assert mapped.ipv4_mapped == v4
        assert refusal_reason(mapped) is not None
        assert refusal_reason(IPv6Address(int(v4))) is not None

    @given(v6s)
    def test_embedded_v4_allowed_when_v6_allowed(self, a: IPv6Address) -> None:
        """For any IPv6 address that embeds an IPv4 one, allowed implies the IPv4 address is allowed."""
        if refusal_reason(a) is not None:
            return
        for v4 in (a.ipv4_mapped, a.sixtofour, *(a.teredo or ())):
            assert v4 is None or refusal_reason(v4) is None
        if a in IPv6Network("64:ff9b::/96"):
            assert refusal_reason(IPv4Address(int(a) & 0xFFFFFFFF)) is None

    @given(st.one_of(v4s, v6s), st.data())
    def test_allow_network_contains(self, a: IPv4Address | IPv6Address, data: st.DataObject) -> None:
        """Any network listed allows all its addresses, and changes nothing outside it (for IPv4)."""
        prefix = data.draw(st.integers(0 if a.version == 4 else 8, a.max_prefixlen))
        net = (IPv4Network if a.version == 4 else IPv6Network)(f"{a}/{prefix}", strict=False)
        assert refusal_reason(a, [net]) is None
        other = data.draw(v4s)
        if isinstance(net, IPv4Network) and other not in net:
            assert (refusal_reason(other, [net]) is None) == (refusal_reason(other) is None)

    @given(st.integers(0, 2**32 - 1), st.data())
    def test_every_ipv4_spelling_gets_the_same_verdict(self, n: int, data: st.DataObject) -> None:
        """Decimal, octal, hex and short spellings of one IPv4 address get the same verdict as the address."""
        a = IPv4Address(n)
        parts = data.draw(st.integers(1, 4))
        octets = list(a.packed)
        numbers = [*octets[: parts - 1], int.from_bytes(bytes(octets[parts - 1 :]), "big")]
        styles: list[Callable[[int], str]] = [
            str,
            lambda n: f"0{n:o}",
            lambda n: f"0x{n:x}",
            lambda n: f"0X{n:X}",
        ]
        host = ".".join(data.draw(st.sampled_from(styles))(number) for number in numbers)
        assert socket.inet_aton(host) == a.packed  # what getaddrinfo(3) would connect to
        assert literal_address(host) == a
        refused = refusal_reason(a)
        if refused is None:
            assert check_url(f"https://{host}:8443/hook").host == host.lower()
        else:
            with pytest.raises(CallbackUrlError, match=f"host {a} is "):
                check_url(f"https://{host}:8443/hook")

    @given(v6s, st.sampled_from(["compressed", "exploded", "upper", "zone"]))
    def test_every_ipv6_spelling_gets_the_same_verdict(self, a: IPv6Address, style: str) -> None:
        """An IPv6 literal gets its address's verdict in compressed, exploded, upper-case or zoned form."""
        text = {"compressed": a.compressed, "exploded": a.exploded, "upper": a.compressed.upper()}.get(
            style, f"{a.compressed}%25eth0"
        )
        url = f"https://[{text}]/hook"
        if refusal_reason(a) is None:
            check_url(url)
        else:
            with pytest.raises(CallbackUrlError, match=r"^host "):
                check_url(url)
