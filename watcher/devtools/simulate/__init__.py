"""The simulated Oration jobs API (SPEC §2) for tests, the demo and the bench: job scripts and state (`jobs`),
the server (`server`), its control API (`control`), faults (`faults`) and `watcher simulate` (`cli`)."""

from watcher.devtools.simulate.cli import simulate_main
from watcher.devtools.simulate.faults import GARBAGE_VARIANTS, POISON_VARIANTS, Faults
from watcher.devtools.simulate.jobs import SimJob, Step, random_script
from watcher.devtools.simulate.server import Simulator

__all__ = [
    "GARBAGE_VARIANTS",
    "POISON_VARIANTS",
    "Faults",
    "SimJob",
    "Simulator",
    "Step",
    "random_script",
    "simulate_main",
]
