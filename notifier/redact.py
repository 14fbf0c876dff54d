"""Per-sink privacy: `redact = ["Email", ...]` masks those record fields in everything one sink
receives (message, digest, webhook body), so a Slack channel can see that a lead arrived while
only the CRM gets the contact details. Also keeps lead contact text out of delivery errors, which
are logged at warning level (a receiver may echo the request back in its error page)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence

from .types import Delivery, Lead, Sink

MASK = "***"
_GROUPS = re.compile(r"\d+")
_ANY_EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+")


def mask_email(value: str) -> str:
    """j***@example.org: the first character and the domain stay, so a reader can tell leads apart."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not domain:
        return MASK
    return f"{local[0]}{MASK}@{domain}"


def mask_phone(value: str) -> str:
    """+1 *** *** 0100: the country code (written with +) and the last four digits stay, every
    other group of digits becomes ***. Short or digit-less values are masked whole."""
    value = value.strip()
    groups = list(_GROUPS.finditer(value))
    if sum(len(g.group()) for g in groups) < 7:
        return MASK
    out: list[str] = []
    last = 0
    for i, group in enumerate(groups):
        out.append(value[last:group.start()])
        digits = group.group()
        if i == 0 and len(groups) > 1 and value[:group.start()].endswith("+") and len(digits) <= 3:
            out.append(digits)
        elif i == len(groups) - 1 and len(digits) >= 4:
            out.append((MASK if len(digits) > 4 else "") + digits[-4:])
        else:
            out.append(MASK)
        last = group.end()
    return "".join(out) + value[last:]


def mask(field: str, value: str) -> str:
    if not value.strip():
        return value  # nothing to hide in an empty field
    if field == "Email":
        return mask_email(value)
    if field == "PhoneNumber":
        return mask_phone(value)
    return MASK if field in ("Name", "URI") else "[redacted]"


def redact_lead(lead: Lead, fields: Iterable[str]) -> Lead:
    fields = tuple(fields)
    raw = dict(lead.raw)
    for key in raw:  # the vendor's spelling, whatever its case
        match = next((f for f in fields if f.lower() == key.lower()), None)
        if match is not None and isinstance(raw[key], str):  # numbers and nulls carry no contact data
            raw[key] = mask(match, raw[key])
    hidden = set(fields)

    def typed(field: str, value: str) -> str:
        return mask(field, value) if field in hidden else value

    return dataclasses.replace(lead, raw=raw, name=typed("Name", lead.name), email=typed("Email", lead.email),
                               phone=typed("PhoneNumber", lead.phone), content=typed("Content", lead.content),
                               uri=typed("URI", lead.uri))


def redact(delivery: Delivery, fields: Sequence[str]) -> Delivery:
    if not fields:
        return delivery
    if delivery.event is not None:
        return _redact_event(delivery, fields)
    return dataclasses.replace(delivery, lead=redact_lead(delivery.lead, fields))


def _redact_event(delivery: Delivery, fields: Sequence[str]) -> Delivery:
    """An operational event names leads only in `delivery.dead` (`leads[].name`): masked as the
    leads themselves are for this sink."""
    raw = delivery.lead.raw
    leads = raw.get("leads")
    if "Name" not in fields or not isinstance(leads, list):
        return delivery
    masked = [{**item, "name": mask("Name", item["name"])} if isinstance(item, dict) and isinstance(
        item.get("name"), str) else item for item in leads]
    return dataclasses.replace(delivery, lead=dataclasses.replace(delivery.lead, raw={**raw, "leads": masked}))


class RedactingSink:
    """Wraps a sink so that every path into it (send, digest, render for test-sink) sees the
    masked lead; the sink itself needs to know nothing about privacy."""

    def __init__(self, sink: Sink, fields: Sequence[str]) -> None:
        self.sink = sink
        self.fields = tuple(fields)
        self.name = sink.name
        self.min_interval = sink.min_interval

    async def send(self, delivery: Delivery) -> str | None:
        return await self.sink.send(redact(delivery, self.fields))

    def render(self, delivery: Delivery) -> str:
        return self.sink.render(redact(delivery, self.fields))

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        return await self.sink.send_digest([redact(d, self.fields) for d in deliveries])

    async def aclose(self) -> None:
        await self.sink.aclose()


def scrub(text: str, leads: Iterable[Lead]) -> str:
    """Take the leads' contact fields (name, email, phone; as written or in
    either JSON escaping) and any
    email address out of `text`, an error message about to be logged above debug level."""
    for lead in leads:
        for value in (lead.email, lead.phone, lead.name):
            value = value.strip()
            if len(value) < 4:
                continue
            for form in {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}:
                text = text.replace(form, MASK)
    return _ANY_EMAIL.sub(lambda m: mask_email(m.group()), text)
