"""`smarterbot-notifier test-sink NAME`: one sample lead through one sink, so an operator can check
a new webhook URL, Slack token or SMTP password before a real lead depends on it."""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime
from typing import IO

import aiohttp

from ._version import USER_AGENT
from .config import Config
from .exceptions import ConfigError, DeliveryError, RetryableError
from .leads import parse_records
from .sinks import SinkContext, create_sink
from .text import safe_text, scrubbed
from .types import Delivery


def sample_delivery(sink: str, now: datetime) -> Delivery:
    session = random.randint(900_000_000, 999_999_999)  # a fresh id: idempotent consumers see a new lead
    record = {"Type": "Lead", "Name": "Test Lead (smarterbot-notifier test-sink)", "Email": "test.lead@example.org",
              "PhoneNumber": "+1 555 0100", "CreateTime": now.isoformat(), "SessionID": session,
              "Content": "This is a test message sent by `smarterbot-notifier test-sink`.",
              "URI": "https://example.org/contact", "Count": 1}
    lead = parse_records("test-sink", [record]).leads[0]
    return Delivery(id=0, sink=sink, chatbot="test-sink", lead=lead, detected_at=now)


async def send_sample(config: Config, name: str, out: IO[str] | None = None) -> bool:
    out = scrubbed(out or sys.stdout)  # the sink's render and a receiver's error may echo a secret
    if name not in config.sinks:
        known = ", ".join(sorted(config.sinks))
        raise ConfigError(f"no sink named {name!r} (configured: {known})", key=f"sinks.{name}", path=config.source)
    sink_config = config.sinks[name]
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as http:
        sink = create_sink(sink_config, SinkContext(http=http, user_agent=USER_AGENT, stdout=out))
        delivery = sample_delivery(name, datetime.now(UTC))
        print(f"Sending a sample lead through sink {name!r} ({sink_config.type}); its `types` filter is not "
              f"applied. This is what is sent:\n{sink.render(delivery)}\n", file=out, flush=True)
        try:
            await sink.send(delivery)
        except DeliveryError as exc:
            kind = "temporary, would be retried" if isinstance(exc, RetryableError) else "permanent"
            print(f"FAILED ({kind}): {safe_text(exc.reason, 1000)}", file=out)
            return False
        finally:
            await sink.aclose()
    print(f"OK: sink {name!r} accepted the sample lead.", file=out)
    return True
