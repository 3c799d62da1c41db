"""Tests of the per-type duration models: quantiles, forgetting, bounds, the stored form and merging."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.polling.adaptive.model import FORMAT_VERSION, DurationModels, ModelFormatError, TypeModel

durations = st.lists(st.floats(0.0, 1e6, allow_nan=False), max_size=300)


def filled(values: list[float], window: int = 1000, start: float = 0.0) -> TypeModel:
    """A model that learnt `values`, finishing one second apart from `start`."""
    model = TypeModel(window)
    for i, v in enumerate(values):
        model.add(v, start + i)
    return model


def lognormal(n: int, median: float, sigma: float, seed: int) -> list[float]:
    """`n` log-normal durations."""
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]


class TestQuantiles:
    """The model answers quantile queries close to the sample it learnt."""

    @pytest.mark.parametrize(("median", "sigma"), [(5.0, 0.4), (300.0, 0.8), (3600.0, 0.2)])
    def test_quantiles_follow_the_sample(self, median: float, sigma: float) -> None:
        """p50, p90 and p99 are within a few percent of the sample's own (2 % sketch accuracy)."""
        values = lognormal(1500, median, sigma, seed=3)
        model = filled(values, window=2000)
        ordered = sorted(values)
        for q in (0.5, 0.9, 0.99):
            exact = ordered[int(q * (len(ordered) - 1))]
            got = model.quantile(q)
            assert got is not None
            assert abs(got - exact) <= 0.05 * exact

    def test_empty_model_has_no_quantile(self) -> None:
        """Nothing learnt, nothing to answer."""
        assert TypeModel().quantile(0.5) is None
        assert TypeModel().samples == 0

    def test_zero_and_negative_durations_are_counted(self) -> None:
        """A job that finished as it was created (or with skewed clocks) counts as a zero duration."""
        model = filled([0.0, -3.0, 10.0, 10.0])
        assert model.samples == 4
        assert model.quantile(0.25) == 0.0


class TestWindows:
    """Two rotating windows: a type whose durations change is relearnt, the model stays bounded."""

    def test_samples_never_exceed_two_windows(self) -> None:
        """However many finishes, at most two windows are held."""
        model = TypeModel(window=50)
        for i in range(1000):
            model.add(float(i % 17 + 1), float(i))
            assert model.samples <= 100
        assert model.samples >= 50
        assert model.observed == 1000

    def test_rotation_forgets_the_old_durations(self) -> None:
        """After two windows of jobs that take ten times longer, nothing of the old durations is left."""
        model = filled(lognormal(300, 10.0, 0.1, seed=1), window=100)
        p50_before = model.quantile(0.5)
        assert p50_before is not None and p50_before < 20.0
        for i, v in enumerate(lognormal(200, 100.0, 0.1, seed=2)):
            model.add(v, 1000.0 + i)
        low = model.quantile(0.0)
        assert low is not None and low > 50.0

    def test_half_relearnt_after_one_window(self) -> None:
        """Between the two, the model mixes old and new: the median moves, the minimum is still old."""
        model = filled(lognormal(150, 10.0, 0.1, seed=1), window=100)  # 50 in the filling window
        for i, v in enumerate(lognormal(60, 100.0, 0.1, seed=2)):
            model.add(v, 1000.0 + i)
        low, high = model.quantile(0.0), model.quantile(1.0)
        assert low is not None and high is not None
        assert low < 20.0 < 50.0 < high


class TestBounds:
    """At most max_types types; the least recently finished goes first."""

    def test_least_recently_finished_type_is_dropped(self) -> None:
        """Five types into room for three: the two oldest are dropped, a type seen again is kept."""
        models = DurationModels(window=10, max_types=3)
        for i, name in enumerate(["a", "b", "c"]):
            models.observe(("ws", name), 1.0, float(i))
        models.observe(("ws", "a"), 1.0, 10.0)  # "a" finished again: now the most recent
        models.observe(("ws", "d"), 1.0, 11.0)
        models.observe(("ws", "e"), 1.0, 12.0)
        assert len(models) == 3
        assert models.get(("ws", "a")) is not None
        assert models.get(("ws", "b")) is None and models.get(("ws", "c")) is None
        assert models.dropped == 2

    def test_a_wide_type_stays_within_a_few_kib(self) -> None:
        """Two full windows of durations spread over four orders of magnitude serialise to under 4 KiB."""
        model = filled(lognormal(2000, 60.0, 2.0, seed=5), window=1000)
        assert model.samples == 1000 or model.samples == 2000
        assert len(model.to_bytes()) < 4096


class TestStoredForm:
    """The bytes the store keeps: a version byte, then a body that reads back to the same model."""

    @settings(max_examples=50, deadline=None)
    @given(durations, st.integers(1, 200))
    def test_round_trip_keeps_counts_and_quantiles(self, values: list[float], window: int) -> None:
        """Reading back what was written gives the same samples, windows and quantiles."""
        model = filled(values, window=window)
        data = model.to_bytes()
        assert data[0] == FORMAT_VERSION
        back = TypeModel.from_bytes(data)
        assert back.samples == model.samples
        assert back.current.count == model.current.count
        assert back.previous.count == model.previous.count
        assert back.observed == model.observed
        assert back.window == model.window
        assert back.rate == pytest.approx(model.rate)
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert back.quantile(q) == pytest.approx(model.quantile(q))
        assert back.to_bytes() == data

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            bytes([FORMAT_VERSION + 1]) + b"{}",
            bytes([FORMAT_VERSION]) + b"not json",
            bytes([FORMAT_VERSION]),
        ],
    )
    def test_unreadable_forms_raise_one_error(self, data: bytes) -> None:
        """An unknown version or a damaged body is a ModelFormatError, never another exception."""
        with pytest.raises(ModelFormatError):
            TypeModel.from_bytes(data)

    def test_missing_field_is_a_format_error(self) -> None:
        """A body without one of its fields is damaged."""
        body = json.loads(filled([1.0, 2.0]).to_bytes()[1:])
        del body["current"]
        with pytest.raises(ModelFormatError, match="damaged"):
            TypeModel.from_bytes(bytes([FORMAT_VERSION]) + json.dumps(body).encode())


class TestMerge:
    """Two replicas' models merge without losing a sample."""

    @settings(max_examples=50, deadline=None)
    @given(durations, durations)
    def test_merge_keeps_every_sample(self, first: list[float], second: list[float]) -> None:
        """Merged through their stored forms, two models hold the sum of their samples and observations."""
        a = filled(first, window=100)
        b = filled(second, window=100, start=10_000.0)
        merged = TypeModel.from_bytes(a.to_bytes())
        merged.merge(TypeModel.from_bytes(b.to_bytes()))
        assert merged.samples == a.samples + b.samples
        assert merged.observed == a.observed + b.observed
        assert merged.last_finished_at == max(a.last_finished_at, b.last_finished_at)

    def test_merge_is_order_independent(self) -> None:
        """A into B and B into A give the same distribution."""
        a = filled(lognormal(120, 10.0, 0.5, seed=1))
        b = filled(lognormal(80, 30.0, 0.5, seed=2), start=500.0)
        ab = TypeModel.from_bytes(a.to_bytes())
        ab.merge(b)
        ba = TypeModel.from_bytes(b.to_bytes())
        ba.merge(a)
        assert ab.samples == ba.samples == 200
        for q in (0.1, 0.5, 0.9):
            assert ab.quantile(q) == pytest.approx(ba.quantile(q))

    def test_merge_does_not_rotate_but_the_next_finish_does(self) -> None:
        """A merge that overfills the filling window keeps everything until the next finish rotates."""
        a = filled([5.0] * 80, window=100)
        a.merge(filled([7.0] * 80, window=100))
        assert a.samples == 160
        a.add(6.0, 1_000.0)
        assert a.current.count == 0 and a.previous.count == 161

    def test_models_merge_into_the_book(self) -> None:
        """DurationModels.merge creates or extends the type's model."""
        book = DurationModels(window=100, max_types=10)
        book.merge(("ws", "a"), filled([1.0, 2.0]))
        book.merge(("ws", "a"), filled([3.0]))
        model = book.get(("ws", "a"))
        assert model is not None and model.samples == 3


class TestShare:
    """A type's weight in the lag budget is its decayed count of finishes."""

    def test_rate_decays_with_time(self) -> None:
        """One day later a type's rate is half what it was."""
        model = filled([1.0] * 10)
        now = model.rate_at
        assert model.rate_at_time(now) == pytest.approx(10.0, rel=1e-3)
        assert model.rate_at_time(now + 86_400.0) == pytest.approx(5.0, rel=1e-3)

    def test_merged_rates_add(self) -> None:
        """Finishes seen by two replicas at the same time count twice."""
        a, b = filled([1.0] * 4), filled([1.0] * 6)
        a.merge(b)
        assert a.rate_at_time(a.rate_at) == pytest.approx(10.0, rel=1e-3)
