"""The memory store's help for `sync_source_range`: the ids of a source, sorted once per pass.

A streamed watch-list sync calls the store once per range, in id order. Scanning every watch at each call
would make a pass over N ids cost N * N / chunk; instead the ids carrying the source are sorted once and
each range is found by bisection. The snapshot only proposes candidates (the caller checks each against
the live watch), so watches deleted or leaving the source since do no harm. What it could miss is an id
that gained the source since: `register` reports the bits it adds (`gained`), which drops a snapshot of
that bit; the ids a range sync adds itself lie at or below its upper bound, so the snapshot is kept for
the ids above it (`synced`). A streamed pass thus sorts once, even while the API registers other watches.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable


class SourceRanges:
    """A sorted snapshot of the ids carrying one source bit, complete above `_floor`."""

    def __init__(self) -> None:
        self._bit: int | None = None  # the snapshot's bit; None: no snapshot
        self._floor: str | None = None  # the snapshot may lack ids <= this; None: it lacks none
        self._ids: list[str] = []

    def gained(self, bits: int) -> None:
        """Watches gained `bits` (a registration): a snapshot of one of them may lack some now."""
        if self._bit is not None and self._bit & bits:
            self._bit = None

    def members(self, bit: int, lo: str | None, hi: str | None, ids: Iterable[tuple[str, int]]) -> list[str]:
        """Candidate ids carrying `bit` in `(lo, hi]`; `ids` are (id, sources) of every watch, read only
        when the snapshot has to be (re)built."""
        if self._bit != bit or (self._floor is not None and (lo is None or lo < self._floor)):
            self._ids = sorted(j for j, sources in ids if sources & bit)
            self._bit, self._floor = bit, None
        start = 0 if lo is None else bisect_right(self._ids, lo)
        end = len(self._ids) if hi is None else bisect_right(self._ids, hi)
        return self._ids[start:end]

    def held(self) -> tuple[int | None, str | None]:
        """The snapshot's state, to give `synced` after the range sync's own registrations."""
        return self._bit, self._floor

    def synced(self, held: tuple[int | None, str | None], bit: int, hi: str | None) -> None:
        """A range sync up to `hi` registered ids carrying `bit`, all at or below `hi` (with no other
        registration in between): keep the snapshot `held` before them, for the ids above `hi`."""
        was, floor = held
        if was != bit or hi is None:
            self._bit = None
            return
        self._bit, self._floor = bit, hi if floor is None else max(floor, hi)
