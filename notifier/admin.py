"""Operator commands that read or repair the state file beside (or without) a running daemon:
`status`, `outbox list|retry|purge`, `state forget`. They never take the daemon's lock; SQLite's
WAL lets them run while it works, and the daemon picks up retried rows within seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import IO, Any

from . import history
from .config import Config
from .exceptions import ConfigError
from .health import verdict
from .history import OutboxRow
from .leads import from_micros
from .service import status_path
from .store import SinkCounts, Store, lock_holder
from .text import safe_json, safe_text, scrubbed


def open_store(config: Config) -> Store:
    return Store(config.state_path, lock=False, create=False)


def status(config: Config, now: datetime) -> dict[str, Any]:
    store = open_store(config)
    try:
        midnight = datetime.combine(now.date(), time(0), UTC)
        today = store.new_since(midnight)
        counts = store.sink_counts()
        known = store.chatbots()
    finally:
        store.close()
    live: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        live = json.loads(status_path(config.state_path).read_text())
    pid = lock_holder(config.state_path)
    chatbots = []
    for chatbot in config.chatbots:
        info = live.get("chatbots", {}).get(chatbot.name, {})
        if info:  # the last run's own view, judged as /readyz judges it
            success = info.get("last_success")
            problem = verdict(failures=int(info.get("failures") or 0), last_error=info.get("last_error"),
                              last_success=datetime.fromisoformat(success) if success else None,
                              degraded=info.get("degraded"), interval=chatbot.interval, now=now)
            result = "ok" if problem is None else problem
        else:  # no live status: the state file still says whether it was ever polled
            result = "baselined" if chatbot.serial_number in known else "never polled"
        chatbots.append({"name": chatbot.name, "serial_number": chatbot.serial_number,
                         "last_poll": info.get("last_poll"), "last_success": info.get("last_success"),
                         "result": result, "new_today": today.get(chatbot.serial_number, 0)})
    sinks: list[dict[str, Any]] = []
    for name in [*config.sinks, *sorted(set(counts) - set(config.sinks))]:
        count = counts.get(name, SinkCounts())
        sinks.append({"name": name, "pending": count.pending, "held": count.held, "dead": count.dead}
                     | ({} if name in config.sinks else {"note": "not in the config"}))
    return {"daemon": {"running": pid is not None, "pid": pid, "status_written": live.get("written"),
                       "problems": live.get("problems", []) if pid is not None else []},
            "chatbots": chatbots, "sinks": sinks}


def print_status_json(data: dict[str, Any], out: IO[str]) -> None:
    print(safe_json(data, indent=2), file=scrubbed(out))


def print_status(data: dict[str, Any], out: IO[str]) -> None:
    """The status table. Names come from the config and the state file, results from the live
    status file (the vendor's words): all are shown through safe_text, all output is scrubbed."""
    out = scrubbed(out)
    daemon = data["daemon"]
    written = daemon["status_written"]
    print(f"daemon: {'running, pid ' + str(daemon['pid']) if daemon['running'] else 'not running'}"
          + (f" (status of {safe_text(str(written), 40)})" if written else ""), file=out)
    rows = [("CHATBOT", "LAST POLL", "NEW TODAY", "RESULT")] + [
        (safe_text(c["name"], 40), safe_text(str(c["last_poll"] or "-"), 40), str(c["new_today"]),
         safe_text(c["result"], 80)) for c in data["chatbots"]]
    for problem in daemon.get("problems", []):
        print(f"problem: {safe_text(str(problem), 300)}", file=out)
    table(rows, out)
    print(file=out)
    table([("SINK", "PENDING", "HELD", "DEAD", "")] + [
        (safe_text(s["name"], 40), str(s["pending"]), str(s["held"]), str(s["dead"]), s.get("note", ""))
        for s in data["sinks"]], out)
    if any(s["held"] for s in data["sinks"]):
        print("\nheld by the flood guard: `outbox list --held` to see them, `outbox retry --held` to send them, "
              "`outbox purge --held` to drop them", file=out)


def table(rows: Sequence[tuple[str, ...]], out: IO[str]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def outbox_list(config: Config, out: IO[str], *, state: history.Unsettled, sink: str | None,
                as_json: bool) -> int:
    check_sink(config, sink)
    out = scrubbed(out)
    store = open_store(config)
    try:
        rows = history.outbox(store, state=state, sink=sink, limit=1000)
        held = sum(c.held for name, c in store.sink_counts().items() if sink in (None, name))
    finally:
        store.close()
    if as_json:
        print(safe_json([_as_dict(row) for row in rows]), file=out)
        return len(rows)
    lines = [("ID", "SINK", "ATTEMPTS", "NEXT/LAST", "CHATBOT", "TYPE", "SESSION", "LAST ERROR")]
    for row in rows:
        when = datetime.fromtimestamp(row.next_at if state == "pending" else row.updated_at, UTC)
        lines.append((str(row.id), safe_text(row.sink, 40), str(row.attempts), when.isoformat(timespec="seconds"),
                      safe_text(row.chatbot, 40), safe_text(row.type, 20), str(row.session_id),
                      safe_text(row.last_error or "", 100)))
    table(lines, out)
    print(f"{len(rows)} {state} deliveries"
          + (f" ({held} more held by the flood guard: --held)" if state == "pending" and held else ""), file=out)
    return len(rows)


def _as_dict(row: OutboxRow) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    data["created"] = from_micros(data.pop("created_us")).isoformat()
    return data


def outbox_retry(config: Config, out: IO[str], *, ids: list[int], state: history.Parked | None,
                 sink: str | None) -> int:
    check_sink(config, sink)
    if not ids and state is None:
        raise ConfigError("name delivery IDs, or --dead / --held (optionally with --sink)")
    store = open_store(config)
    try:
        count = history.requeue(store, datetime.now(UTC).timestamp(), ids=ids, state=state, sink=sink)
    finally:
        store.close()
    print(f"{count} deliveries are due again", file=scrubbed(out))
    return count


def outbox_purge(config: Config, out: IO[str], *, state: history.Parked, older_than_days: float | None,
                 sink: str | None) -> int:
    check_sink(config, sink)
    cutoff = None if older_than_days is None else (
        datetime.now(UTC) - timedelta(days=older_than_days)).timestamp()
    store = open_store(config)
    try:
        count = history.purge(store, state, cutoff, sink)
    finally:
        store.close()
    what = "dead letters" if state == "dead" else "held deliveries"
    print(f"{count} {what} purged (their leads stay seen and are not notified again)", file=scrubbed(out))
    return count


def state_forget(config: Config, out: IO[str], chatbot: str, *, yes: bool = False, dry_run: bool = False,
                 ask: Callable[[str], str] | None = None) -> int:
    """Drop a chatbot's seen keys so its next poll is a first run. Leads the outbox or the ledger
    refers to stay (store.forget). On a terminal it asks first, unless `yes`; `dry_run` only counts.
    Returns the number of keys dropped (or that would be)."""
    store = open_store(config)
    try:
        serial = resolve_chatbot(config, store.chatbots(), chatbot)
        assert serial is not None
        name = safe_text(repr(chatbot), 80)
        count = store.forget(serial, dry_run=True)
        if dry_run:
            print(f"would forget {_plural(count, 'seen lead')} of {name} (leads with deliveries or a ledger stay); "
                  "nothing changed", file=scrubbed(out))
            return count
        if not yes and ask is not None:
            answer = ask(f"Forget {_plural(count, 'seen lead')} of {name}? Its next poll is a first run again. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing changed", file=scrubbed(out))
                return 0
        count = store.forget(serial)
    finally:
        store.close()
    print(f"forgot {_plural(count, 'seen lead')} of {name}; its next poll is a first run again "
          "(first_run applies; leads with deliveries or a ledger stay, so none is notified twice)", file=scrubbed(out))
    return count


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def resolve_chatbot(config: Config, known: dict[str, str], name: str | None) -> str | None:
    """A chatbot named by config name, serial, or (for one no longer configured) its stored name."""
    if name is None:
        return None
    configured = config.chatbot(name)
    if configured is not None:
        return configured.serial_number
    serial = next((s for s, stored in known.items() if name in (s, stored)), None)
    if serial is None:
        raise ConfigError(f"no chatbot {name!r} in the config or the state file")
    return serial


def check_sink(config: Config, sink: str | None) -> None:
    if sink is not None and sink not in config.sinks:
        raise ConfigError(f"no sink named {sink!r} (configured: {', '.join(sorted(config.sinks))})")
