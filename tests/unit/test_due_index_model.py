"""`DueIndex` against a plain model (hypothesis, stateful): any sequence of puts, discards, claims, releases
and unclaims leaves the index answering as a dict of due times and claims would.

The model: each indexed job has a due time and maybe a claim (token, expiry); a claimed job counts at its
expiry. A claim takes the jobs whose time has come, by (time, job id), gives each a new token larger than
any before, and makes it count at `now + lease_s`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from watcher.store.due import DueIndex

JOBS = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
TIMES = st.integers(0, 60).map(float)  # whole seconds: ties are common, float sums exact
LEASES = st.integers(1, 30).map(float)  # a real lease is never zero


@dataclass
class Entry:
    due: float
    token: int | None = None  # the claim's, if claimed (then `due` is the claim's expiry)


class DueIndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = DueIndex()
        self.model: dict[str, Entry] = {}
        self.tokens: list[int] = []

    @rule(job=JOBS, due=TIMES)
    def put(self, job: str, due: float) -> None:
        self.index.put(job, due)
        self.model[job] = Entry(due)

    @rule(items=st.lists(st.tuples(JOBS, TIMES), max_size=6))
    def put_many(self, items: list[tuple[str, float]]) -> None:
        self.index.put_many(items)
        for job, due in items:
            self.model[job] = Entry(due)

    @rule(job=JOBS)
    def discard(self, job: str) -> None:
        self.index.discard(job)
        self.model.pop(job, None)

    @rule(now=TIMES, limit=st.integers(0, 4), lease_s=LEASES)
    def claim(self, now: float, limit: int, lease_s: float) -> None:
        got = self.index.claim(now, limit, lease_s)
        due = sorted((e.due, job) for job, e in self.model.items() if e.due <= now)
        assert [job for job, _ in got] == [job for _, job in due[:limit]]
        for job, token in got:
            assert not self.tokens or token > max(self.tokens), "a token is never reused"
            self.tokens.append(token)
            self.model[job] = Entry(now + lease_s, token)

    @rule(job=JOBS, due=TIMES, which=st.integers(0, 1000))
    def release(self, job: str, due: float, which: int) -> None:
        token = self._token(which)
        self.index.release(job, token, due)
        entry = self.model.get(job)
        if entry is not None and entry.token == token:
            self.model[job] = Entry(due)

    @rule(job=JOBS, which=st.integers(0, 1000))
    def unclaim(self, job: str, which: int) -> None:
        token = self._token(which)
        self.index.unclaim(job, token)
        entry = self.model.get(job)
        if entry is not None and entry.token == token:
            del self.model[job]

    def _token(self, which: int) -> int:
        """A token that was handed out (mostly the latest ones), or one that never was."""
        if not self.tokens or which % 5 == 0:
            return 10_000 + which
        return self.tokens[-1 - which % min(len(self.tokens), 3)]

    @invariant()
    def agrees_with_the_model(self) -> None:
        ix, model = self.index, self.model
        assert len(ix) == len(model)
        for job in ["a", "b", "c", "d", "e", "f", "g", "z"]:
            assert (job in ix) == (job in model)
            entry = model.get(job)
            assert ix.lease_of(job) == (entry.token if entry else None)
        assert ix.next_due_at() == min((e.due for e in model.values()), default=None)
        for now in (0.0, 15.0, 30.0, 60.0, 100.0):
            assert ix.count_due(now) == sum(e.due <= now for e in model.values())
        assert ix.entries <= 2 * len(ix) + 1024


DueIndexMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestDueIndexMachine = DueIndexMachine.TestCase
