"""`smarterbot-notifier replay`: send leads the notifier already saw to one sink again, for a
consumer that lost data or a new sink that should catch up. Replays go through the outbox like
any delivery (retry, backoff, dead letters, ledger) and keep their original webhook-id, so an
idempotent consumer can ignore what it already has. With no daemon running, this command claims
and delivers them itself — exactly the deliveries it queued, nothing else that waits in the
outbox (on SQLite it takes the state's lock meanwhile); otherwise the daemon sends them within
seconds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO

import aiohttp

from ._version import USER_AGENT
from .admin import check_sink, resolve_chatbot
from .config import Config
from .dispatcher import Dispatcher
from .exceptions import NotifierError, StateError
from .leads import from_micros, to_micros
from .ledger import lead_state
from .sinks import SinkContext, create_sink
from .state import LeadQuery, open_state
from .text import safe_text
from .waiting import HoursGate
from .wording import iso, plural


async def replay(config: Config, out: IO[str], *, sink: str, session: int | None, since: datetime | None,
                 chatbot: str | None = None, dry_run: bool = False) -> int:
    check_sink(config, sink)
    sink_config = config.sinks[sink]
    routed = {c.serial_number for c in config.chatbots if sink in c.sinks}
    store = await open_state(config, "operator")
    try:
        serial = resolve_chatbot(config, await store.chatbots(), chatbot)
        leads = await store.find_leads(LeadQuery(serial=serial, session_id=session, notified_only=True,
                                                 since_us=None if since is None else to_micros(since)),
                                       limit=10_000_000)
        if session is not None and not leads:
            raise NotifierError(f"no notified lead with SessionID {session} in the state"
                                + (f" for chatbot {chatbot!r}" if chatbot else "") + " (`leads --session` shows it)")
        chosen = [lead for lead in leads if lead.serial in routed and sink_config.accepts(lead.type)]
        on_way = {lead.id for lead in chosen if any(s.sink == sink and s.state in ("pending", "held")
                                                    for s in lead.sinks)}
        queue = [lead for lead in chosen if lead.id not in on_way]
        skipped = len(leads) - len(chosen)
        print(f"{plural(len(leads), 'notified lead')} {'matches' if len(leads) == 1 else 'match'}; "
              f"{len(queue)} to replay to {sink!r}"
              + (f", {len(on_way)} already pending or held for it" if on_way else "")
              + (f", {skipped} not routed to it (chatbot sinks or types)" if skipped else ""), file=out)
        if dry_run:
            for lead in reversed(queue):
                print(f"  {iso(from_micros(lead.created_us))}  {lead.type:<11} "
                      f"{lead.session_id}  {safe_text(lead.chatbot, 40)}  {lead_state(lead)}", file=out)
            return len(queue)
        if not queue:
            return 0
        digest = sink_config.human and sink_config.on_flood == "digest" and len(queue) > config.poll.flood_threshold
        now = datetime.now(UTC).timestamp()
        queued = await store.replay(sink, [lead.id for lead in reversed(queue)], now, digest=digest)  # oldest first
        daemons = [i for i in await store.instances(now) if i.alive]
    finally:
        await store.close()
    print(f"queued {plural(len(queued), 'replay')}" + (" as one summary message" if digest else ""), file=out)
    if not daemons:
        try:
            return await _deliver_now(config, sink, queued, out)
        except StateError:  # a daemon started meanwhile (it holds the SQLite lock): it has the replays now
            pass
    pid = str(daemons[0].pid) if daemons else "unknown"
    print(f"the running daemon (pid {pid}) sends them within seconds (a sink added to the config since it "
          f"started needs a reload first: SIGHUP); follow with `leads show SESSIONID` or "
          f"`outbox list --sink {sink}`", file=out)
    return len(queued)


async def _deliver_now(config: Config, sink: str, queued: Sequence[int], out: IO[str]) -> int:
    store = await open_state(config, "sender")  # SQLite: takes the lock, no daemon sends beside us
    try:
        async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as http:
            context = SinkContext(http=http, user_agent=USER_AGENT, stdout=out)
            # exactly what it queued, and (as a running daemon would) not outside the sink's hours
            dispatcher = Dispatcher(store, {sink: create_sink(config.sinks[sink], context)}, config.delivery,
                                    lambda: datetime.now(UTC), only=queued, hours=HoursGate.of(config.sinks))
            try:
                await dispatcher.deliver_due()
            finally:
                await dispatcher.aclose()
        pending = await store.count_pending(queued)
        waiting = await store.outbox(state="held", sink=sink, limit=10**9) \
            if dispatcher.hours.closed(sink, datetime.now(UTC)) else []
    finally:
        await store.close()
    held = sum(1 for row in waiting if row.id in set(queued))
    if held:
        hours = config.sinks[sink].active_hours
        print(f"{plural(held, 'replay')} wait for the sink's active hours ({hours.describe() if hours else ''}): "
              f"sent when they begin by `run`, or now with `outbox retry --held --sink {sink}`", file=out)
    print(f"no daemon is running, so this command sent them: {dispatcher.delivered} delivered"
          + (f", {plural(dispatcher.failed, 'attempt')} failed" if dispatcher.failed else "")
          + (f"; {pending} still pending, sent by the next `run` or `once`" if pending else ""), file=out)
    return dispatcher.delivered
