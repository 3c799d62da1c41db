"""Adaptive polling (SPEC §12): learn how long each job type takes, and poll where its jobs finish.

`model` keeps the per-type duration sketches, `schedule` turns a type's distribution into a polling policy
(the optimal inspection schedule), `planner` spreads the pooled lag budget across types and caches the
schedules, `sim` and `bench` measure it against the backoff curve in simulated time.
"""

from watcher.polling.adaptive.model import DurationModels, ModelFormatError, TypeKey, TypeModel
from watcher.polling.adaptive.planner import Planner, allocate, slow_threshold
from watcher.polling.adaptive.schedule import AdaptiveSettings, Schedule, next_poll_delay

__all__ = [
    "AdaptiveSettings",
    "DurationModels",
    "ModelFormatError",
    "Planner",
    "Schedule",
    "TypeKey",
    "TypeModel",
    "allocate",
    "next_poll_delay",
    "slow_threshold",
]
