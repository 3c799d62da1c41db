"""Tests of Standard Webhooks signing and verification, cross-checked with an independent verifier."""

from __future__ import annotations

import base64

import pytest

from tests.support.standard_webhooks import SignatureError, verify_standard
from watcher.delivery.signing import decode_secret, sign, verify

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER_SECRET = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()


def _headers(signature: str, msg_id: str = VECTOR_ID, ts: int = VECTOR_TS) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


class TestSign:
    """`sign` produces the header value."""

    def test_known_vector(self) -> None:
        """The Standard Webhooks reference vector signs to the published value."""
        assert sign([VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG

    def test_rotation_signs_with_every_secret(self) -> None:
        """Two secrets give two space-separated entries, each verifiable with its secret alone."""
        header = sign([VECTOR_SECRET, OTHER_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY)
        entries = header.split(" ")
        assert len(entries) == 2
        assert entries[0] == VECTOR_SIG
        assert all(e.startswith("v1,") for e in entries)
        for secret in (VECTOR_SECRET, OTHER_SECRET):
            assert verify([secret], _headers(header), VECTOR_BODY, now=VECTOR_TS)
            assert verify_standard([secret], _headers(header), VECTOR_BODY, now=VECTOR_TS) == (
                VECTOR_ID,
                VECTOR_TS,
            )
        assert not verify([OTHER_SECRET], _headers(entries[0]), VECTOR_BODY, now=VECTOR_TS)

    def test_no_secret_is_an_error(self) -> None:
        """Signing with no secret at all is refused rather than sending an unsigned request."""
        with pytest.raises(ValueError, match="at least one"):
            sign([], VECTOR_ID, VECTOR_TS, VECTOR_BODY)

    @pytest.mark.parametrize("bad", ["whsec_not base64!!", "whsec_", "whsec_abc"])
    def test_bad_secret_message_hides_the_secret(self, bad: str) -> None:
        """A malformed secret raises ValueError whose message does not contain the secret."""
        with pytest.raises(ValueError, match="webhook secret") as info:
            decode_secret(bad)
        assert bad.removeprefix("whsec_") not in str(info.value) or bad == "whsec_"

    def test_secret_without_prefix_is_accepted(self) -> None:
        """A bare base64 key decodes the same as with the prefix."""
        assert decode_secret(VECTOR_SECRET) == decode_secret(VECTOR_SECRET.removeprefix("whsec_"))


class TestVerify:
    """`verify` accepts only fresh, untampered, correctly signed requests."""

    def test_accepts_vector_and_is_case_insensitive(self) -> None:
        """The vector verifies, also with capitalised header names."""
        headers = {k.title(): v for k, v in _headers(VECTOR_SIG).items()}
        assert verify([VECTOR_SECRET], headers, VECTOR_BODY, now=VECTOR_TS)

    @pytest.mark.parametrize(
        ("msg_id", "ts", "body"),
        [
            ("msg_other", VECTOR_TS, VECTOR_BODY),
            (VECTOR_ID, VECTOR_TS + 1, VECTOR_BODY),
            (VECTOR_ID, VECTOR_TS, b'{"test": 2432232315}'),
        ],
    )
    def test_rejects_tampering(self, msg_id: str, ts: int, body: bytes) -> None:
        """Changing the id, the timestamp or one byte of the body breaks the signature."""
        headers = _headers(VECTOR_SIG, msg_id=msg_id, ts=ts)
        assert not verify([VECTOR_SECRET], headers, body, now=VECTOR_TS)
        with pytest.raises(SignatureError):
            verify_standard([VECTOR_SECRET], headers, body, now=VECTOR_TS)

    @pytest.mark.parametrize(("offset", "ok"), [(-300, True), (299.5, True), (301, False), (-301, False)])
    def test_timestamp_tolerance(self, offset: float, ok: bool) -> None:
        """A timestamp more than five minutes away from now, past or future, is rejected."""
        assert verify([VECTOR_SECRET], _headers(VECTOR_SIG), VECTOR_BODY, now=VECTOR_TS + offset) is ok

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"webhook-id": VECTOR_ID, "webhook-signature": VECTOR_SIG},
            {"webhook-id": VECTOR_ID, "webhook-timestamp": "soon", "webhook-signature": VECTOR_SIG},
            _headers(VECTOR_SIG.replace("v1,", "v2,")),
            _headers("v1," + "A" * 44),
        ],
    )
    def test_rejects_missing_or_malformed_headers(self, headers: dict[str, str]) -> None:
        """Missing headers, a non-numeric timestamp, an unknown version or a wrong digest all fail."""
        assert not verify([VECTOR_SECRET], headers, VECTOR_BODY, now=VECTOR_TS)

    def test_extra_entries_do_not_hide_a_valid_one(self) -> None:
        """A receiver finds its signature among other entries in any position."""
        header = f"v1a,xyz v1,{'B' * 44} {VECTOR_SIG}"
        assert verify([VECTOR_SECRET], _headers(header), VECTOR_BODY, now=VECTOR_TS)

    def test_round_trip_with_independent_verifier(self) -> None:
        """What we sign, an independent implementation of the spec accepts."""
        body = b'{"type":"job.failed"}'
        header = sign([OTHER_SECRET], "evt-1", 1_700_000_000, body)
        assert verify_standard(
            [OTHER_SECRET], _headers(header, "evt-1", 1_700_000_000), body, 1_700_000_000.0
        )
