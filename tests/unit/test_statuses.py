"""Tests of watcher.statuses: names, event types and metric labels of grown statuses (SPEC §2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from watcher.statuses import (
    METRIC_STATUSES,
    GrownStatusLog,
    config_name,
    default_events,
    event_type,
    is_grown,
    metric_label,
    status_name,
)


@pytest.mark.parametrize(
    ("value", "name", "etype", "label"),
    [
        ("success", "success", "job.success", "success"),
        ("FAILED", "failed", "job.failed", "failed"),
        ("Active", "active", "job.active", "active"),
        ("cancelled", "cancelled", "job.cancelled", "other"),
        ("CANCELLED", "cancelled", "job.cancelled", "other"),
        ("paused_2", "paused_2", "job.paused_2", "other"),
        ("expired", "upstream_expired", "job.upstream_expired", "other"),
        ("MISSING", "upstream_missing", "job.upstream_missing", "other"),
        ("slow", "upstream_slow", "job.upstream_slow", "other"),
        ("unknown", "upstream_unknown", "job.upstream_unknown", "other"),
        ("a" * 32, "a" * 32, "job." + "a" * 32, "other"),
        ("a" * 33, "a" * 33, "job.unknown", "other"),
        ("Cancelled (by user)", "cancelled (by user)", "job.unknown", "other"),
        ("2fast", "2fast", "job.unknown", "other"),
        ("on-hold", "on-hold", "job.unknown", "other"),
        ("nul\x00here", "nul\ufffdhere", "job.unknown", "other"),
    ],
)
def test_names_types_and_labels(value: str, name: str, etype: str, label: str) -> None:
    """Known statuses in any case, grown names, reserved names and odd values, as SPEC §2 says."""
    assert status_name(value) == name
    assert event_type(name) == etype
    assert metric_label(name) == label


@given(st.text(max_size=300))
def test_any_value_gets_a_bounded_printable_name_and_a_bounded_label(value: str) -> None:
    """Whatever the upstream sends: a name of at most 64 printable characters, an event type that is
    job.<name> or job.unknown, and a label from a fixed set; the name never collides with a verdict."""
    name = status_name(value)
    assert len(name) <= 64 and name.isprintable()
    assert name == status_name(value.upper()) or not value.isascii()
    assert event_type(name) in ("job." + name, "job.unknown")
    assert metric_label(name) in METRIC_STATUSES
    assert name not in ("expired", "missing", "slow", "unknown")


def test_case_only_changes_share_a_name() -> None:
    """Statuses are compared lower-cased: CANCELLED and cancelled are one status."""
    assert status_name("CANCELLED") == status_name("Cancelled") == status_name("cancelled")
    assert not is_grown("SUCCESS") and is_grown("cancelled")


def test_config_names_and_default_filter() -> None:
    """terminal_statuses entries are named like upstream values; the default filter follows them."""
    assert config_name("Cancelled") == "cancelled"
    assert config_name("expired") == "upstream_expired"
    with pytest.raises(ValueError, match="not a status name"):
        config_name("not a name")
    defaults = ["job.success", "job.failed", "job.expired", "job.missing"]
    assert default_events(["success", "failed"]) == defaults
    assert default_events(["success", "failed", "cancelled", "upstream_expired"]) == [
        "job.success", "job.failed", "job.cancelled", "job.upstream_expired", "job.expired", "job.missing",
    ]  # fmt: skip


class TestGrownStatusLog:
    """Each distinct grown value is logged once per process, 100 at most, then a summary an hour."""

    def test_once_per_value(self) -> None:
        """The same value twice is one line; another value is another line."""
        now = [0.0]
        grown = GrownStatusLog(lambda: now[0])
        with capture_logs() as logs:
            for value in ("cancelled", "cancelled", "CANCELLED", "paused", "cancelled"):
                grown.seen(value, "job-1", "acme")
        lines = [e for e in logs if e["event"] == "upstream.grown_status"]
        assert [e["status"] for e in lines] == ["cancelled", "CANCELLED", "paused"]
        assert lines[0]["event_type"] == "job.cancelled" and lines[0]["metric_label"] == "other"
        assert lines[0]["log_level"] == "warning" and lines[0]["job_id"] == "job-1"

    def test_cap_then_hourly_summary(self) -> None:
        """Past 100 values, nothing per value: one summary at once, then at most one an hour."""
        now = [0.0]
        grown = GrownStatusLog(lambda: now[0])
        with capture_logs() as logs:
            for i in range(100):
                grown.seen(f"s{i}", "j", "acme")
            for i in range(100, 150):
                now[0] += 60.0
                grown.seen(f"s{i}", "j", "acme")
            now[0] += 3600.0
            grown.seen("s150", "j", "acme")
        per_value = [e for e in logs if e["event"] == "upstream.grown_status"]
        summaries = [e for e in logs if e["event"] == "upstream.grown_status_summary"]
        assert len(per_value) == 100
        assert len(summaries) == 2
        assert (summaries[0]["unlogged_values"], summaries[0]["logged_values"]) == (1, 100)
        assert (summaries[1]["unlogged_values"], summaries[1]["unlogged_polls"]) == (50, 50)
