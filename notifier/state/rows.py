"""How a lead's record is written into a state and read back, the same by every engine: one JSON
encoding for the raw record (so a lead reads the same whichever engine recorded it, and
`state migrate` copies it byte for byte), and one reading of a delivery's row."""

from __future__ import annotations

import json
from typing import Any

from ..leads import lead_from_stored
from ..types import EVENT_KINDS, Delivery, LeadKey
from .records import OUTSIDE_HOURS
from .times import moment

encode_raw = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder for every record

# what a delivery's row holds, in this order (both engines select these columns)
# (the last: an operator sent it on while its sink was outside its active hours, `outbox retry --held`)
SENT_ON = f"coalesce(substr(o.last_error, 1, {len(OUTSIDE_HOURS)}) = '{OUTSIDE_HOURS}', false)"
DELIVERY_COLUMNS = ("o.id, o.sink, o.attempts, o.batch, l.serial, l.session_id, l.created_us, l.chatbot, l.type, "
                    f"l.raw, l.detected_at_us, {SENT_ON}")
# a held delivery that waits for its sink's active hours (not one the flood guard holds for an operator)
WAITING = f"state = 'held' AND substr(last_error, 1, {len(OUTSIDE_HOURS)}) = '{OUTSIDE_HOURS}'"


def decode_raw(raw: str) -> dict[str, Any]:
    """The stored record for an operator's eyes: an object, or empty when it is not one."""
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def delivery(row: tuple[Any, ...]) -> Delivery:
    (outbox_id, sink, attempts, batch, serial, session_id, created_us, chatbot, kind, raw, detected_us, sent_on) = row
    lead = lead_from_stored(LeadKey(serial, session_id, created_us), kind, json.loads(raw))
    return Delivery(id=outbox_id, sink=sink, chatbot=chatbot, lead=lead, detected_at=moment(detected_us),
                    attempts=attempts, batch=batch, any_hour=bool(sent_on),
                    event=kind if kind in EVENT_KINDS else None)
