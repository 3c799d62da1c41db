"""The `[polling]` keys of adaptive polling (SPEC §12): defaults, and bad values named by key."""

from __future__ import annotations

import pytest

from watcher.config import load_config
from watcher.daemon.parts import adaptive_settings
from watcher.errors import ConfigError
from watcher.polling.adaptive import AdaptiveSettings

ENV = {
    "WATCHER_UPSTREAM__WORKSPACE_SLUG": "acme",
    "WATCHER_UPSTREAM__TOKEN": "tok",
    "WATCHER_UPSTREAM__API_KEY": "key",
    "HOME": "/home/tester",
}


def test_defaults_are_specs_and_the_planners() -> None:
    """strategy backoff; the adaptive_* defaults of SPEC §12, which are also AdaptiveSettings'."""
    s = load_config(None, ENV)
    assert s.polling.strategy == "backoff"
    assert adaptive_settings(s) == AdaptiveSettings()
    assert (s.polling.adaptive_lag_target_s, s.polling.adaptive_min_samples) == (60.0, 20)
    assert (s.polling.adaptive_min_interval_s, s.polling.adaptive_max_interval_s) == (1.0, 3600.0)
    assert (s.polling.adaptive_max_types, s.polling.adaptive_window, s.polling.slow_quantile) == (
        10_000,
        1000,
        0.99,
    )


def test_keys_are_taken() -> None:
    """Every key reaches the planner's settings."""
    env = {
        **ENV,
        "WATCHER_POLLING__STRATEGY": "adaptive",
        "WATCHER_POLLING__ADAPTIVE_LAG_TARGET_S": "30",
        "WATCHER_POLLING__ADAPTIVE_MIN_SAMPLES": "50",
        "WATCHER_POLLING__ADAPTIVE_MAX_TYPES": "7",
        "WATCHER_POLLING__ADAPTIVE_WINDOW": "100",
        "WATCHER_POLLING__SLOW_QUANTILE": "0.9",
    }
    s = load_config(None, env)
    assert s.polling.strategy == "adaptive"
    a = adaptive_settings(s)
    assert (a.lag_target_s, a.min_samples, a.max_types, a.window, a.slow_quantile) == (30.0, 50, 7, 100, 0.9)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("STRATEGY", "smart", "polling.strategy"),
        ("ADAPTIVE_LAG_TARGET_S", "0", "polling.adaptive_lag_target_s"),
        ("ADAPTIVE_MIN_SAMPLES", "0", "polling.adaptive_min_samples"),
        ("ADAPTIVE_MAX_INTERVAL_S", "0.5", "polling.adaptive_max_interval_s"),
        ("ADAPTIVE_MAX_TYPES", "0", "polling.adaptive_max_types"),
        ("ADAPTIVE_WINDOW", "-1", "polling.adaptive_window"),
        ("SLOW_QUANTILE", "1", "polling.slow_quantile"),
    ],
)
def test_a_bad_value_names_its_key(key: str, value: str, named: str) -> None:
    """A bad value is refused with the key named."""
    with pytest.raises(ConfigError) as info:
        load_config(None, {**ENV, f"WATCHER_POLLING__{key}": value})
    assert any(p.startswith(named) for p in info.value.problems), info.value.problems
