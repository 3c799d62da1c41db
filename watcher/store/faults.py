"""Which kind of store outage a `StoreUnavailable` is: a label of `watcher_store_errors_total` and the log.

A leaf module: the stores raise `StoreOutage` with its kind, the loops catch `StoreUnavailable` (its base,
in `watcher.errors`) and the health object reads the kind back with `fault_of`.
"""

from __future__ import annotations

from enum import StrEnum

from watcher.errors import StoreError, StoreUnavailable


class StoreFault(StrEnum):
    """Why a store call failed; every value but `request` means the store as a whole is out."""

    UNREACHABLE = "unreachable"  # PostgreSQL down, restarting, refusing, out of connections, connection lost
    DISK_FULL = "disk_full"
    READ_ONLY = "read_only"
    LOCKED = "locked"  # SQLite: another process holds the write lock
    IO_ERROR = "io_error"
    CANNOT_OPEN = "cannot_open"  # SQLite: the file or its WAL cannot be opened or created
    REQUEST = "request"  # this request failed (its data or statement); the store is up


class StoreOutage(StoreUnavailable):
    """`StoreUnavailable` that says which kind of outage it is."""

    def __init__(self, message: str, fault: StoreFault = StoreFault.UNREACHABLE) -> None:
        super().__init__(message)
        self.fault = fault


def fault_of(exc: StoreError) -> StoreFault:
    """The kind of a store error: a `StoreOutage`'s own, `unreachable` for another `StoreUnavailable`."""
    if isinstance(exc, StoreOutage):
        return exc.fault
    if isinstance(exc, StoreUnavailable):
        return StoreFault.UNREACHABLE
    return StoreFault.REQUEST
