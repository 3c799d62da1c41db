"""Per-endpoint budgets (`watcher.delivery.slots`): in-flight counts, claim exclusion, waiting queues."""

from __future__ import annotations

from watcher.delivery.slots import EndpointSlots


def test_an_endpoint_at_its_budget_is_excluded_and_its_queue_takes_freed_slots() -> None:
    """Two slots: the third delivery waits; when one ends the waiting one takes its slot, in order."""
    slots: EndpointSlots[str] = EndpointSlots()
    for _ in ("a", "b"):
        assert not slots.full("ops", 2)
        slots.take("ops")
    assert slots.full("ops", 2)
    assert slots.excluded() == {"ops"}
    slots.wait("ops", "c", 10.0)
    slots.wait("ops", "d", 11.0)
    nxt = slots.done("ops")
    assert nxt is not None and (nxt.item, nxt.claimed_at) == ("c", 10.0)
    assert slots.excluded() == {"ops"}  # the freed slot went to "c"
    nxt = slots.done("ops")
    assert nxt is not None and nxt.item == "d"
    assert slots.done("ops") is None
    assert slots.excluded() == set()  # one in flight of two
    assert slots.done("ops") is None
    assert not slots.full("ops", 2)


def test_endpoints_are_independent_and_a_stop_drops_the_waiting() -> None:
    """A full endpoint does not exclude another; a stop forgets the waiting ones (they stay leased)."""
    slots: EndpointSlots[str] = EndpointSlots()
    slots.full("hung", 1)
    slots.take("hung")
    slots.wait("hung", "x", 0.0)
    assert not slots.full("good", 4)
    slots.take("good")
    assert slots.excluded() == {"hung"}
    assert slots.drop_waiting() == 1
    assert slots.done("hung") is None
    assert slots.excluded() == set()
