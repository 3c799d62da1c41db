"""The in-memory due index shared by the single-process stores."""

from __future__ import annotations

import random

from watcher.store.due import DueIndex


class TestDueIndex:
    """Ordering, claims, lazy invalidation and compaction."""

    def test_claims_earliest_first_and_expires(self) -> None:
        """Claims come out by due time; an unsaved claim is due again at its lease expiry."""
        ix = DueIndex()
        ix.put_many([("b", 2.0), ("a", 1.0), ("c", 9.0)])
        got = ix.claim(5.0, 10, lease_s=10.0)
        assert [j for j, _ in got] == ["a", "b"]
        assert ix.count_due(5.0) == 0 and ix.next_due_at() == 9.0
        assert ix.claim(14.9, 10, 10.0) == [("c", ix.lease_of("c"))]
        again = ix.claim(15.0, 10, 10.0)
        assert [j for j, _ in again] == ["a", "b"]
        assert [t for _, t in again] != [t for _, t in got]

    def test_put_and_discard_invalidate_old_entries(self) -> None:
        """Only the latest due time of a watch counts; discarded watches never come out."""
        ix = DueIndex()
        ix.put("a", 1.0)
        ix.put("a", 8.0)
        ix.put("b", 2.0)
        ix.discard("b")
        assert ix.count_due(5.0) == 0 and ix.next_due_at() == 8.0
        assert ix.claim(5.0, 10, 1.0) == []
        assert [j for j, _ in ix.claim(8.0, 10, 1.0)] == ["a"]
        assert "b" not in ix and len(ix) == 1

    def test_count_due_matches_a_scan_and_heap_stays_compact(self) -> None:
        """count_due agrees with brute force after churn, and stale entries do not pile up."""
        rnd = random.Random(7)
        ix = DueIndex()
        truth: dict[str, float] = {}
        for step in range(20_000):
            job = f"j{rnd.randrange(500)}"
            due = float(rnd.randrange(1000))
            ix.put(job, due)
            truth[job] = due
            if step % 97 == 0:
                ix.discard(job)
                truth.pop(job)
        for now in (0.0, 250.0, 999.0):
            assert ix.count_due(now) == sum(1 for t in truth.values() if t <= now)
        assert ix.entries <= 2 * len(ix) + 1024
