"""What the daemon has learnt about how long jobs of each type take (SPEC §12).

A job type is (workspace, upstream `name`); a duration is the terminal `updatedAt` minus `createdAt`, both
upstream clocks. Each type keeps two DDSketches of `window` finished jobs each: the one filling and the last
full one. Queries merge both, so a type whose durations change is relearnt within two windows while one
odd hour never swings the model. Sketches merge without loss, which is what lets replicas share a model:
the store adds what a replica learnt to what it holds instead of overwriting it.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

from watcher.errors import WatcherError

# 2 % relative accuracy: ten times finer than the poll jitter, and about 60 bins for a type whose
# durations span a factor of ten, so a type stays within a few KiB serialised.
RELATIVE_ACCURACY = 0.02
FORMAT_VERSION = 1
# A type's share of all finishes decays with this half-life, so the lag budget follows today's mix.
RATE_HALF_LIFE_S = 86_400.0

TypeKey = tuple[str, str]  # (workspace, upstream `name`)

_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_GAMMA = _MAPPING.gamma


class ModelFormatError(WatcherError):
    """A stored model cannot be read: unknown format version or a damaged body."""


def _new_sketch() -> DDSketch:
    return DDSketch(RELATIVE_ACCURACY)


def _bins(sketch: DDSketch) -> list[tuple[int, float]]:
    """The non-empty (key, count) bins of a sketch's positive store, keys ascending.

    DDSketch has no public iterator over its bins; this is the one place that reads its dense store, and
    the serialisation round-trip test catches a library change that moves it.
    """
    store = sketch._store
    if not isinstance(store, DenseStore) or store.count == 0:
        return []
    bins, offset = store.bins, store.offset
    return [(k, bins[k - offset]) for k in range(store.min_key, store.max_key + 1) if bins[k - offset] > 0]


def _zero_count(sketch: DDSketch) -> float:
    return float(sketch.count) - sum(c for _, c in _bins(sketch))


def _sketch_to_json(sketch: DDSketch) -> dict[str, Any]:
    bins = _bins(sketch)
    first = bins[0][0] if bins else 0
    dense = [0] * (bins[-1][0] - first + 1) if bins else []
    for key, count in bins:
        dense[key - first] = round(count)
    return {"zero": round(_zero_count(sketch)), "offset": first, "bins": dense}


def _sketch_from_json(data: dict[str, Any]) -> DDSketch:
    sketch = _new_sketch()
    zero = int(data["zero"])
    if zero > 0:
        sketch.add(0.0, float(zero))
    key = int(data["offset"])
    for count in data["bins"]:
        if int(count) > 0:
            # A bin's representative value maps back to the same key, so counts land where they were.
            sketch.add(_MAPPING.value(key), float(count))
        key += 1
    return sketch


class TypeModel:
    """The duration distribution of one job type: two rotating windows, merged for every query."""

    __slots__ = ("_cdf", "current", "last_finished_at", "observed", "previous", "rate", "rate_at", "window")

    def __init__(self, window: int = 1000) -> None:
        self.window = max(1, window)
        self.current = _new_sketch()  # filling: fewer than `window` finishes
        self.previous = _new_sketch()  # the last full window; dropped at the next rotation
        self.rate = 0.0  # finishes, decayed with RATE_HALF_LIFE_S, as of `rate_at`
        self.rate_at = 0.0
        self.last_finished_at = 0.0
        self.observed = 0  # finishes ever added or merged in: a change counter for cached schedules
        self._cdf: tuple[list[float], list[float]] | None = None

    @property
    def samples(self) -> int:
        """How many finished jobs the model holds now (both windows)."""
        return round(float(self.current.count) + float(self.previous.count))

    def add(self, duration_s: float, finished_at: float) -> None:
        """Learn one finished job; rotates the windows when the filling one is full."""
        self.current.add(max(0.0, duration_s))
        self._count_finish(finished_at, 1.0)
        self.observed += 1
        self._cdf = None
        self.maybe_rotate()

    def maybe_rotate(self) -> bool:
        """Start a new window if the filling one holds `window` finishes; True if it did.

        This is the only place samples leave the model, and it is forgetting by design: the oldest
        window goes. `merge` never rotates, so merging replicas' models loses nothing.
        """
        if self.current.count < self.window:
            return False
        self.previous = self.current
        self.current = _new_sketch()
        self._cdf = None
        return True

    def merge(self, other: TypeModel) -> None:
        """Add another model's finishes to this one (two replicas): windows merge pairwise, nothing lost."""
        self.current.merge(other.current)
        self.previous.merge(other.previous)
        if other.rate > 0.0:
            self._count_finish(other.rate_at, other.rate)
        self.last_finished_at = max(self.last_finished_at, other.last_finished_at)
        self.observed += other.observed
        self._cdf = None

    def rate_at_time(self, now: float) -> float:
        """The decayed count of finishes as of `now`: this type's weight in the pooled lag budget."""
        decay: float = 2.0 ** (-max(0.0, now - self.rate_at) / RATE_HALF_LIFE_S)
        return self.rate * decay

    def _count_finish(self, at: float, weight: float) -> None:
        if at >= self.rate_at:
            self.rate = self.rate_at_time(at) + weight
            self.rate_at = at
        else:  # an older finish (a replica's merge): decay it to our newer reference time
            self.rate += weight * 2.0 ** (-(self.rate_at - at) / RATE_HALF_LIFE_S)
        self.last_finished_at = max(self.last_finished_at, at)

    def cdf(self) -> tuple[list[float], list[float]]:
        """The merged distribution as a piecewise-linear CDF: (ages ascending, F at each age).

        Built from the sketch bins (a bin's finishes are spread evenly over its relative width), so it is
        exact for the sketch and costs one pass over its bins. Empty lists for an empty model.
        """
        if self._cdf is not None:
            return self._cdf
        counts: dict[int, float] = {}
        for sketch in (self.previous, self.current):
            for key, count in _bins(sketch):
                counts[key] = counts.get(key, 0.0) + count
        zero = _zero_count(self.previous) + _zero_count(self.current)
        total = zero + sum(counts.values())
        ages: list[float] = []
        probs: list[float] = []
        if total > 0:
            ages.append(0.0)
            probs.append(zero / total)
            running = zero
            for key in sorted(counts):
                upper = _GAMMA**key
                lower = upper / _GAMMA
                if lower > ages[-1]:
                    ages.append(lower)
                    probs.append(running / total)
                running += counts[key]
                ages.append(upper)
                probs.append(min(1.0, running / total))
        self._cdf = (ages, probs)
        return self._cdf

    def quantile(self, q: float) -> float | None:
        """The duration (seconds) below which a fraction `q` of the type's jobs finished; None if empty."""
        ages, probs = self.cdf()
        if not ages:
            return None
        q = min(1.0, max(0.0, q))
        if q <= probs[0]:
            # Zero-length jobs, or none: then the lower edge of the first bin that holds any.
            return ages[0] if probs[0] > 0.0 else ages[bisect_right(probs, 0.0) - 1]
        i = bisect_left(probs, q)
        if i >= len(ages):
            return ages[-1]
        lo, hi = probs[i - 1], probs[i]
        frac = 0.0 if hi <= lo else (q - lo) / (hi - lo)
        return ages[i - 1] + frac * (ages[i] - ages[i - 1])

    def to_bytes(self) -> bytes:
        """The model as stored: a format-version byte, then compact JSON (a few KiB)."""
        body = {
            "window": self.window,
            "current": _sketch_to_json(self.current),
            "previous": _sketch_to_json(self.previous),
            "rate": self.rate,
            "rate_at": self.rate_at,
            "last_finished_at": self.last_finished_at,
            "observed": self.observed,
        }
        return bytes([FORMAT_VERSION]) + json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TypeModel:
        """Read a stored model; raises `ModelFormatError` for an unknown version or a damaged body."""
        if not data or data[0] != FORMAT_VERSION:
            version = data[0] if data else None
            raise ModelFormatError(f"unknown duration model format version {version}")
        try:
            body = json.loads(data[1:])
            model = cls(int(body["window"]))
            model.current = _sketch_from_json(body["current"])
            model.previous = _sketch_from_json(body["previous"])
            model.rate = float(body["rate"])
            model.rate_at = float(body["rate_at"])
            model.last_finished_at = float(body["last_finished_at"])
            model.observed = int(body["observed"])
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            raise ModelFormatError(f"damaged duration model: {e}") from e
        if not all(math.isfinite(v) for v in (model.rate, model.rate_at, model.last_finished_at)):
            raise ModelFormatError("damaged duration model: a non-finite number")
        return model


def merge_stored(stored: bytes | None, delta: bytes, window: int) -> bytes:
    """How the store adds a replica's delta to a stored model: the finishes of both, nothing overwritten.

    The delta's finishes join the stored model's windows pairwise (a delta learnt since the last flush
    holds them all in its filling window); the result rotates if its filling window is full. A stored
    model that cannot be read (a future format, damage) is replaced by the delta rather than kept stuck.
    """
    base = TypeModel(window)
    if stored is not None:
        try:
            base = TypeModel.from_bytes(stored)
        except ModelFormatError:
            base = TypeModel(window)
    base.window = max(1, window)
    base.merge(TypeModel.from_bytes(delta))
    base.maybe_rotate()
    return base.to_bytes()


class DurationModels:
    """Every type's model, at most `max_types` of them: the least recently finished type is dropped."""

    def __init__(self, window: int = 1000, max_types: int = 10_000) -> None:
        self.window = window
        self.max_types = max(1, max_types)
        self._models: OrderedDict[TypeKey, TypeModel] = OrderedDict()
        self.dropped = 0  # types evicted to stay within max_types

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[tuple[TypeKey, TypeModel]]:
        return iter(list(self._models.items()))

    def get(self, key: TypeKey) -> TypeModel | None:
        """The type's model, or None if it never finished (or was dropped)."""
        return self._models.get(key)

    def observe(self, key: TypeKey, duration_s: float, finished_at: float) -> TypeModel:
        """Learn one finished job of type `key`; the type becomes the most recently finished."""
        model = self._models.get(key)
        if model is None:
            model = TypeModel(self.window)
            self._models[key] = model
        model.add(duration_s, finished_at)
        self._touch(key)
        return model

    def put(self, key: TypeKey, model: TypeModel) -> TypeModel:
        """Replace type `key`'s model (with the store's merged one); it becomes the most recently learnt."""
        model.window = self.window
        self._models[key] = model
        self._touch(key)
        return model

    def merge(self, key: TypeKey, other: TypeModel) -> TypeModel:
        """Merge a model learnt elsewhere (a replica, the store) into type `key`'s."""
        model = self._models.get(key)
        if model is None:
            model = TypeModel(self.window)
            self._models[key] = model
        model.merge(other)
        self._touch(key)
        return model

    def _touch(self, key: TypeKey) -> None:
        # Recency of learning stands in for recency of finishing: a merge brings news of finishes too.
        self._models.move_to_end(key)
        while len(self._models) > self.max_types:
            self._models.popitem(last=False)
            self.dropped += 1
