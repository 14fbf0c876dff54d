"""Operator commands that read or repair the state file beside (or without) a running daemon:
`status`, `outbox list|retry|purge`, `state forget`. They never take the daemon's lock; SQLite's
WAL lets them run while it works, and the daemon picks up retried rows within seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import IO, Any

from .config import Config
from .exceptions import ConfigError
from .leads import from_micros
from .service import status_path
from .store import OutboxRow, SinkCounts, Store, lock_holder
from .text import safe_text


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
        if info.get("failures"):
            result = f"failing: {info['last_error']}"
        elif info:
            result = "ok"
        else:  # no live status: the state file still says whether it was ever polled
            result = "baselined" if chatbot.serial_number in known else "never polled"
        chatbots.append({"name": chatbot.name, "serial_number": chatbot.serial_number,
                         "last_poll": info.get("last_poll"), "last_success": info.get("last_success"),
                         "result": result, "new_today": today.get(chatbot.serial_number, 0)})
    sinks: list[dict[str, Any]] = []
    for name in [*config.sinks, *sorted(set(counts) - set(config.sinks))]:
        count = counts.get(name, SinkCounts())
        sinks.append({"name": name, "pending": count.pending, "dead": count.dead}
                     | ({} if name in config.sinks else {"note": "not in the config"}))
    return {"daemon": {"running": pid is not None, "pid": pid, "status_written": live.get("written")},
            "chatbots": chatbots, "sinks": sinks}


def print_status(data: dict[str, Any], out: IO[str]) -> None:
    daemon = data["daemon"]
    print(f"daemon: {'running, pid ' + str(daemon['pid']) if daemon['running'] else 'not running'}"
          + (f" (status of {daemon['status_written']})" if daemon["status_written"] else ""), file=out)
    rows = [("CHATBOT", "LAST POLL", "NEW TODAY", "RESULT")] + [
        (c["name"], c["last_poll"] or "-", str(c["new_today"]), safe_text(c["result"], 80)) for c in data["chatbots"]]
    _table(rows, out)
    print(file=out)
    _table([("SINK", "PENDING", "DEAD", "")] + [(s["name"], str(s["pending"]), str(s["dead"]), s.get("note", ""))
                                                for s in data["sinks"]], out)


def _table(rows: Sequence[tuple[str, ...]], out: IO[str]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def outbox_list(config: Config, out: IO[str], *, dead: bool, sink: str | None, as_json: bool) -> int:
    _check_sink(config, sink)
    store = open_store(config)
    try:
        rows = store.outbox(dead=dead, sink=sink, limit=1000)
    finally:
        store.close()
    if as_json:
        print(json.dumps([_as_dict(row) for row in rows]), file=out)
        return len(rows)
    table = [("ID", "SINK", "ATTEMPTS", "NEXT/LAST", "CHATBOT", "TYPE", "SESSION", "LAST ERROR")]
    for row in rows:
        when = datetime.fromtimestamp(row.updated_at if dead else row.next_at, UTC).isoformat(timespec="seconds")
        table.append((str(row.id), row.sink, str(row.attempts), when, row.chatbot, row.type, str(row.session_id),
                      safe_text(row.last_error or "", 100)))
    _table(table, out)
    print(f"{len(rows)} {'dead' if dead else 'pending'} deliveries", file=out)
    return len(rows)


def _as_dict(row: OutboxRow) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    data["created"] = from_micros(data.pop("created_us")).isoformat()
    return data


def outbox_retry(config: Config, out: IO[str], *, ids: list[int], dead: bool, sink: str | None) -> int:
    _check_sink(config, sink)
    if not ids and not dead:
        raise ConfigError("name delivery IDs, or --dead (optionally with --sink)")
    store = open_store(config)
    try:
        count = store.retry(datetime.now(UTC).timestamp(), ids=ids, all_dead=dead, dead_sink=sink)
    finally:
        store.close()
    print(f"{count} deliveries are due again", file=out)
    return count


def outbox_purge(config: Config, out: IO[str], *, older_than_days: float | None, sink: str | None) -> int:
    _check_sink(config, sink)
    cutoff = None if older_than_days is None else (
        datetime.now(UTC) - timedelta(days=older_than_days)).timestamp()
    store = open_store(config)
    try:
        count = store.purge_dead(cutoff, sink)
    finally:
        store.close()
    print(f"{count} dead letters purged (their leads stay seen and are not notified again)", file=out)
    return count


def state_forget(config: Config, out: IO[str], chatbot: str) -> int:
    store = open_store(config)
    try:
        known = store.chatbots()
        configured = config.chatbot(chatbot)
        serial = configured.serial_number if configured else next(
            (s for s, name in known.items() if chatbot in (s, name)), None)
        if serial is None:
            raise ConfigError(f"no chatbot {chatbot!r} in the config or the state file")
        count = store.forget(serial)
    finally:
        store.close()
    print(f"forgot {count} seen leads of {chatbot!r}; its next poll is a first run again (first_run applies)",
          file=out)
    return count


def _check_sink(config: Config, sink: str | None) -> None:
    if sink is not None and sink not in config.sinks:
        raise ConfigError(f"no sink named {sink!r} (configured: {', '.join(sorted(config.sinks))})")
