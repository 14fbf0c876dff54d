"""`smarterbot-notifier test-sink NAME`: one sample lead through one sink, so an operator can check
a new webhook URL, Slack token or SMTP password before a real lead depends on it. For a webhook it
also shows the request headers that really went out, secrets masked."""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import IO

import aiohttp

from ._version import USER_AGENT
from .config import Config
from .exceptions import DeliveryError, RetryableError, UsageError
from .leads import parse_records
from .sinks import SinkContext, create_sink
from .sinks.base import SinkConfig
from .sinks.webhook import WebhookConfig
from .text import safe_text, scrubbed
from .types import Delivery

MASK = "***"


def sample_delivery(sink: str, now: datetime) -> Delivery:
    session = random.randint(900_000_000, 999_999_999)  # a fresh id: idempotent consumers see a new lead
    record = {"Type": "Lead", "Name": "Test Lead (smarterbot-notifier test-sink)", "Email": "test.lead@example.org",
              "PhoneNumber": "+1 555 0100", "CreateTime": now.isoformat(), "SessionID": session,
              "Content": "This is a test message sent by `smarterbot-notifier test-sink`.",
              "URI": "https://example.org/contact", "Count": 1}
    lead = parse_records("test-sink", [record]).leads[0]
    return Delivery(id=0, sink=sink, chatbot="test-sink", lead=lead, detected_at=now)


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


async def send_sample(config: Config, name: str, out: IO[str] | None = None) -> bool:
    out = scrubbed(out or sys.stdout)  # the sink's render and a receiver's error may echo a secret
    if name not in config.sinks:
        known = ", ".join(sorted(config.sinks))
        raise UsageError(f"no sink named {name!r} (configured: {known})")
    sink_config = config.sinks[name]
    sent: list[Mapping[str, str]] = []

    async def headers_sent(_: aiohttp.ClientSession, __: SimpleNamespace,
                           params: aiohttp.TraceRequestHeadersSentParams) -> None:
        sent.append(dict(params.headers))

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)
    failure: str | None = None
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trace_configs=[trace]) as http:
        sink = create_sink(sink_config, SinkContext(http=http, user_agent=USER_AGENT, stdout=out))
        delivery = sample_delivery(name, datetime.now(UTC))
        intro = (f"Sending a sample lead through sink {name!r} ({sink_config.type}); its `types` filter is not "
                 "applied.")
        if sink_config.type == "console":  # the sink itself prints it: once is enough
            print(intro, file=out, flush=True)
        else:
            print(f"{intro} This is what is sent:\n{sink.render(delivery)}\n", file=out, flush=True)
        try:
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
    print(f"OK: sink {name!r} accepted the sample lead.", file=out)
    return True
