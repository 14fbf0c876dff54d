"""`smarterbot-notifier test-sink NAME`: one sample lead through one sink, so an operator can check
a new webhook URL, Slack token, SMTP password or template before a real lead depends on it; with
`--session ID`, a real lead from the state instead. It shows what the sink's templates rendered,
and for a webhook also the request headers that really went out, secrets masked. With `--event
KIND`, a sample operational event of that kind instead (how an ops channel will see one). Neither
the sink's `types`/`events` filters nor its active hours apply: it is sent now."""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import IO, Any

import aiohttp

from . import events
from ._version import USER_AGENT
from .config import Config
from .exceptions import DeliveryError, NotifierError, RetryableError, UsageError
from .leads import lead_from_stored, parse_records
from .sinks import SinkContext, create_sink
from .sinks.base import SinkConfig
from .sinks.webhook import WebhookConfig
from .state import EventRecord
from .text import safe_text, scrubbed
from .types import Delivery, LeadKey

MASK = "***"


def sample_record(now: datetime, session: int, lead_type: str = "Lead") -> dict[str, Any]:
    """A record as the LeadList API returns one, every documented field set."""
    return {"Type": lead_type, "Name": "Test Lead (smarterbot-notifier test-sink)", "Email": "test.lead@example.org",
            "PhoneNumber": "+1 555 0100", "CreateTime": now.isoformat(), "SessionID": session,
            "Content": "This is a test message sent by `smarterbot-notifier test-sink`.",
            "URI": "https://example.org/contact", "Count": 1}


def sample_delivery(sink: str, now: datetime, *, lead_type: str = "Lead", session: int | None = None) -> Delivery:
    if session is None:
        session = random.randint(900_000_000, 999_999_999)  # a fresh id: idempotent consumers see a new lead
    lead = parse_records("test-sink", [sample_record(now, session, lead_type)]).leads[0]
    return Delivery(id=0, sink=sink, chatbot="test-sink", lead=lead, detected_at=now)


def sample_deliveries() -> list[Delivery]:
    """A Lead and an Appointment: what every template is rendered with when the config is read."""
    now = datetime.now(UTC)
    return [sample_delivery("sample", now, lead_type=kind, session=900_000_000 + i)
            for i, kind in enumerate(("Lead", "Appointment"))]


def sample_event(sink: str, kind: str, now: datetime) -> Delivery:
    """A sample operational event of `kind` (EVENT_KINDS) for `sink`, from chatbot "test-sink",
    built as the daemon builds one; its identity holds `now`, so each run is a new event."""
    since = now - timedelta(minutes=15)
    record: EventRecord
    if kind == "poll.failing":
        record = events.poll_failing("test-sink", "test-sink", since, now, failures=15,
                                     error="chatbot 'test-sink': Code 401 (a sample event)",
                                     message="Sample: secret key revoked (sent by smarterbot-notifier test-sink)",
                                     code=401, http_status=200)
    elif kind == "poll.recovered":
        record = events.poll_recovered("test-sink", "test-sink", since, now)
    elif kind == "delivery.dead":
        given_up = sample_delivery("example-crm", now)  # never the sink it is sent to, as in the daemon
        record = events.delivery_dead([given_up], "Sample: answered 410 Gone (sent by smarterbot-notifier test-sink)",
                                      8, now)
    elif kind == "flood.fired":
        record = events.flood_fired("test-sink", "test-sink", now, count=80, threshold=50, actions={sink: "digest"})
    else:
        raise UsageError(f"no event kind {kind!r}")
    lead = lead_from_stored(LeadKey(record.serial, record.session_id, record.created_us), record.kind, record.raw)
    return Delivery(id=0, sink=sink, chatbot=record.chatbot, lead=lead, detected_at=now, event=record.kind)


def masked_headers(headers: Mapping[str, str], config: SinkConfig) -> list[str]:
    """`Name: value` lines of a request as sent. The signature keeps only its scheme (`v1,***`);
    Authorization keeps its scheme; every configured custom header's value is masked."""
    secret = {name.lower() for name in getattr(config, "headers", {})} | {"authorization"}
    lines = []
    for name, value in headers.items():
        if name.lower() == "webhook-signature":
            value = " ".join(f"{part.split(',', 1)[0]},{MASK}" for part in value.split())
        elif name.lower() in secret:
            scheme, _, rest = value.partition(" ")
            value = f"{scheme} {MASK}" if name.lower() == "authorization" and rest else MASK
        lines.append(f"  {safe_text(name, 100)}: {safe_text(value, 300)}")
    return lines


async def stored_delivery(config: Config, sink: str, session: int) -> tuple[Delivery, str]:
    """The newest lead with this SessionID in the state, as a delivery to `sink` (with its real
    webhook-id), and a line saying which lead it is."""
    from .state import LeadQuery, open_state

    store = await open_state(config, "operator")
    try:
        found = await store.find_leads(LeadQuery(session_id=session), limit=2)
    finally:
        await store.close()
    if not found:
        raise NotifierError(f"no lead with SessionID {session} in the state (`leads` lists the leads it has)")
    record = found[0]
    lead = lead_from_stored(LeadKey(record.serial, record.session_id, record.created_us), record.type, record.raw)
    delivery = Delivery(id=0, sink=sink, chatbot=record.chatbot, lead=lead,
                        detected_at=datetime.fromtimestamp(record.detected_at, UTC))
    which = (f"{record.type} {session} of chatbot {safe_text(repr(record.chatbot), 80)}"
             + (" (the newest of the leads with this SessionID)" if len(found) > 1 else ""))
    return delivery, which


async def send_sample(config: Config, name: str, out: IO[str] | None = None, *, session: int | None = None,
                      event: str | None = None) -> bool:
    out = scrubbed(out or sys.stdout)  # the sink's render and a receiver's error may echo a secret
    if name not in config.sinks:
        known = ", ".join(sorted(config.sinks))
        raise UsageError(f"no sink named {name!r} (configured: {known})")
    sink_config = config.sinks[name]
    if event is not None:
        delivery = sample_event(name, event, datetime.now(UTC))
        intro = f"Sending a sample {event} event through sink {name!r} ({sink_config.type})"
    elif session is None:
        delivery = sample_delivery(name, datetime.now(UTC))
        intro = f"Sending a sample lead through sink {name!r} ({sink_config.type})"
    else:
        delivery, which = await stored_delivery(config, name, session)
        intro = (f"Sending {which} from the state through sink {name!r} ({sink_config.type}), with its real "
                 "webhook-id (a consumer that deduplicates may ignore it)")
    intro += "; its `events` setting is not applied." if event else "; its `types` filter is not applied."
    if sink_config.active_hours is not None:
        intro += f"\nActive hours ({sink_config.active_hours.describe()}) are ignored for this test: it is sent now."
    sent: list[Mapping[str, str]] = []

    async def headers_sent(_: aiohttp.ClientSession, __: SimpleNamespace,
                           params: aiohttp.TraceRequestHeadersSentParams) -> None:
        sent.append(dict(params.headers))

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)
    failure: str | None = None
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trace_configs=[trace]) as http:
        sink = create_sink(sink_config, SinkContext(http=http, user_agent=USER_AGENT, stdout=out))
        try:
            if sink_config.type == "console":  # the sink itself prints it: once is enough
                print(intro, file=out, flush=True)
            else:  # the sink's real rendering, templates and all
                print(f"{intro} This is what is sent:\n{sink.render(delivery)}\n", file=out, flush=True)
            await sink.send(delivery)
        except DeliveryError as exc:
            kind = "temporary, would be retried" if isinstance(exc, RetryableError) else "permanent"
            failure = f"FAILED ({kind}): {safe_text(exc.reason, 1000)}"
        finally:
            await sink.aclose()
    if isinstance(sink_config, WebhookConfig):
        if sent:
            print("Request headers sent (secrets masked):", *masked_headers(sent[-1], sink_config), sep="\n",
                  file=out)
        else:
            print("No request was sent (the connection failed before it).", file=out)
    if failure is not None:
        print(failure, file=out)
        return False
    what = "sample event" if event else "sample lead" if session is None else "lead"
    print(f"OK: sink {name!r} accepted the {what}.", file=out)
    return True
