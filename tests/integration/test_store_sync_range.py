"""The store contract of `sync_source_range`, run against every store: one id range of a source at a time."""

from __future__ import annotations

import itertools

import pytest

from tests.integration.test_store_contract import LEASE, T0, jid, polled, reg
from watcher.models import Source
from watcher.store.base import Store, SyncResult


class TestSyncSourceRange:
    """sync_source_range: `sync_source` restricted to the ids in `(lo, hi]`."""

    async def test_only_the_range_changes(self, store: Store) -> None:
        """Ids outside the range are neither removed nor counted; inside, the rule is as usual."""
        await store.sync_source(Source.FILE, [reg(n, Source.FILE) for n in (1, 2, 3, 4, 5)], T0)
        # (2, 4] now lists only 4: 3 leaves, 1, 2 and 5 are outside the range.
        result = await store.sync_source_range(Source.FILE, [reg(4, Source.FILE)], jid(2), jid(4), T0)
        assert result == SyncResult(added=0, removed=1)
        assert await store.get_watch(jid(3)) is None
        for n in (1, 2, 4, 5):
            assert await store.get_watch(jid(n)) is not None

    async def test_open_bounds_and_joins(self, store: Store) -> None:
        """A None bound is open; ids joining the range are registered, due at once."""
        await store.sync_source(Source.FILE, [reg(5, Source.FILE)], T0)
        assert await store.sync_source_range(
            Source.FILE, [reg(1, Source.FILE), reg(2, Source.FILE)], None, jid(2), T0
        ) == SyncResult(added=2, removed=0)
        assert await store.sync_source_range(Source.FILE, [], jid(2), None, T0) == SyncResult(
            added=0, removed=1
        )
        assert await store.get_watch(jid(5)) is None
        assert sorted(w.job_id for w in await store.claim_due(T0, 10, LEASE)) == [jid(1), jid(2)]

    async def test_held_removals_only_wait(self, store: Store) -> None:
        """remove=False registers what joins and keeps what would leave, counting it as waiting."""
        await store.sync_source(Source.FILE, [reg(1, Source.FILE), reg(2, Source.FILE)], T0)
        before = await store.get_watch(jid(2))
        result = await store.sync_source_range(
            Source.FILE, [reg(1, Source.FILE), reg(3, Source.FILE)], None, None, T0 + 5, remove=False
        )
        assert result == SyncResult(added=1, removed=0, waiting=1)
        kept = await store.get_watch(jid(2))
        assert kept is not None and before is not None and kept.registered_at == before.registered_at
        assert await store.get_watch(jid(3)) is not None

    async def test_other_sources_survive(self, store: Store) -> None:
        """A watch the API also registered loses only the file source; a finished one stays for retention."""
        await store.register([reg(2, Source.API)], T0)
        await store.sync_source(Source.FILE, [reg(1, Source.FILE), reg(2, Source.FILE)], T0)
        w = next(w for w in await store.claim_due(T0, 10, LEASE) if w.job_id == jid(1))
        assert await store.save_polls([polled(w, "success", T0)]) == [True]
        assert await store.sync_source_range(Source.FILE, [], jid(0), jid(9), T0 + 1) == SyncResult(
            added=0, removed=2
        )
        survivor, finished = await store.get_watch(jid(2)), await store.get_watch(jid(1))
        assert survivor is not None and survivor.sources == Source.API
        assert finished is not None and finished.final == "success"

    async def test_registration_outside_the_range_is_refused(self, store: Store) -> None:
        """A registration outside `(lo, hi]` is a caller's bug: ValueError, and nothing changes."""
        with pytest.raises(ValueError, match="outside"):
            await store.sync_source_range(Source.FILE, [reg(7, Source.FILE)], jid(1), jid(5), T0)
        with pytest.raises(ValueError, match="outside"):
            await store.sync_source_range(Source.FILE, [reg(1, Source.FILE)], jid(1), jid(5), T0)
        assert await store.get_watch(jid(7)) is None

    async def test_chunks_make_the_whole(self, store: Store) -> None:
        """Syncing consecutive ranges in id order gives what one `sync_source` of the whole list gives."""
        await store.sync_source(Source.FILE, [reg(n, Source.FILE) for n in range(0, 40, 2)], T0)
        wanted = [reg(n, Source.FILE) for n in range(0, 40, 3)]
        bounds = [None, jid(10), jid(25), None]
        total = SyncResult(added=0, removed=0)
        for lo, hi in itertools.pairwise(bounds):
            part = [r for r in wanted if (lo is None or r.job_id > lo) and (hi is None or r.job_id <= hi)]
            got = await store.sync_source_range(Source.FILE, part, lo, hi, T0)
            total = SyncResult(total.added + got.added, total.removed + got.removed)
        # Before: evens. Now: multiples of 3. Joined: odd multiples of 3; left: evens not multiples of 3.
        assert total == SyncResult(added=7, removed=13)
        page = await store.list_watches(limit=100)
        assert [w.job_id for w in page.watches] == [r.job_id for r in wanted]

    async def test_a_source_gained_between_ranges_is_seen(self, store: Store) -> None:
        """An id that gains the source from elsewhere while a pass is under way is diffed like the rest."""
        await store.sync_source(Source.FILE, [reg(n, Source.FILE) for n in (1, 2, 3)], T0)
        assert await store.sync_source_range(
            Source.FILE, [reg(1, Source.FILE)], None, jid(10), T0
        ) == SyncResult(added=0, removed=2)
        await store.register([reg(20, Source.FILE), reg(30, Source.API)], T0)
        assert await store.sync_source_range(
            Source.FILE, [reg(25, Source.FILE)], jid(10), None, T0
        ) == SyncResult(added=1, removed=1)
        assert await store.get_watch(jid(20)) is None
        assert await store.get_watch(jid(30)) is not None
        assert await store.sync_source_range(Source.FILE, [], None, None, T0) == SyncResult(
            added=0, removed=2
        )
