"""The notifier's state behind one async interface: SQLite (the embedded default) or PostgreSQL."""

from .interface import State
from .opening import Role, open_state, probe
from .records import (
    INT64,
    OUTSIDE_HOURS,
    Attempt,
    EventRecord,
    Instance,
    LeadQuery,
    LeadRecord,
    Migrated,
    OutboxRow,
    Outcome,
    Parked,
    PollRecord,
    Requeued,
    SinkCounts,
    SinkState,
    Snapshot,
    Unsettled,
    webhook_id,
)

__all__ = ["INT64", "OUTSIDE_HOURS", "Attempt", "EventRecord", "Instance", "LeadQuery", "LeadRecord", "Migrated",
           "OutboxRow", "Outcome", "Parked", "PollRecord", "Requeued", "Role", "SinkCounts", "SinkState", "Snapshot",
           "State", "Unsettled", "open_state", "probe", "webhook_id"]
