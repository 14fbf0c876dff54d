"""`smarterbot-notifier replay`: send leads the notifier already saw to one sink again, for a
consumer that lost data or a new sink that should catch up. Replays go through the outbox like
any delivery (retry, backoff, dead letters, ledger) and keep their original webhook-id, so an
idempotent consumer can ignore what it already has. With no daemon running, this command takes
the state's lock and delivers them itself — exactly the deliveries it queued, nothing else that
waits in the outbox; otherwise the daemon sends them within seconds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO

import aiohttp

from . import history
from ._version import USER_AGENT
from .admin import check_sink, open_store, resolve_chatbot
from .config import Config
from .dispatcher import Dispatcher
from .exceptions import NotifierError, StateError
from .history import iso, plural
from .leads import from_micros, to_micros
from .ledger import lead_state
from .sinks import SinkContext, create_sink
from .store import Store, lock_holder
from .text import safe_text


async def replay(config: Config, out: IO[str], *, sink: str, session: int | None, since: datetime | None,
                 chatbot: str | None = None, dry_run: bool = False) -> int:
    check_sink(config, sink)
    sink_config = config.sinks[sink]
    routed = {c.serial_number for c in config.chatbots if sink in c.sinks}
    store = open_store(config)
    try:
        serial = resolve_chatbot(config, store.chatbots(), chatbot)
        leads = history.find_leads(store, serial=serial, session_id=session, notified_only=True,
                                   since_us=None if since is None else to_micros(since), limit=10_000_000)
        if session is not None and not leads:
            raise NotifierError(f"no notified lead with SessionID {session} in the state file"
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
        queued = history.replay(store, sink, [lead.id for lead in reversed(queue)],  # oldest first
                                datetime.now(UTC).timestamp(), digest=digest)
    finally:
        store.close()
    print(f"queued {plural(len(queued), 'replay')}" + (" as one summary message" if digest else ""), file=out)
    pid = lock_holder(config.state_path)
    if pid is None:
        try:
            return await _deliver_now(config, sink, queued, out)
        except StateError:  # a daemon started meanwhile: it has the replays now
            pid = lock_holder(config.state_path)
    print(f"the running daemon (pid {pid}) sends them within seconds (a sink added to the config since it "
          f"started needs a reload first: SIGHUP); follow with `leads show SESSIONID` or "
          f"`outbox list --sink {sink}`", file=out)
    return len(queued)


async def _deliver_now(config: Config, sink: str, queued: Sequence[int], out: IO[str]) -> int:
    store = Store(config.state_path, create=False, busy_timeout=5.0)  # takes the lock: no daemon sends beside us
    try:
        async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as http:
            context = SinkContext(http=http, user_agent=USER_AGENT, stdout=out)
            dispatcher = Dispatcher(store, {sink: create_sink(config.sinks[sink], context)}, config.delivery,
                                    lambda: datetime.now(UTC), only=queued)  # exactly what it queued
            try:
                await dispatcher.deliver_due()
            finally:
                await dispatcher.aclose()
        pending = store.count_pending(queued)
    finally:
        store.close()
    print(f"no daemon is running, so this command sent them: {dispatcher.delivered} delivered"
          + (f", {plural(dispatcher.failed, 'attempt')} failed" if dispatcher.failed else "")
          + (f"; {pending} still pending, sent by the next `run` or `once`" if pending else ""), file=out)
    return dispatcher.delivered
