"""Operator commands that read or repair the state beside (or without) a running daemon:
`status`, `outbox list|retry|purge`, `state forget`. They never take the daemon's lock (SQLite's
WAL, or PostgreSQL, lets them run while it works), and the daemon picks up retried deliveries
within seconds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import IO, Any

from . import wording
from .config import Config
from .exceptions import NotifierError, UsageError
from .health import verdict
from .leads import from_micros
from .sinks import SinkConfig
from .state import OutboxRow, Parked, SinkCounts, Unsettled, open_state
from .text import safe_json, safe_text, scrubbed


def _moment(value: Any) -> datetime | None:
    """A time from the live status file (ISO 8601), or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def status(config: Config, now: datetime) -> dict[str, Any]:
    store = await open_state(config, "operator")
    try:
        midnight = datetime.combine(now.date(), time(0), UTC)
        today = await store.new_since(midnight)
        counts = await store.sink_counts()
        known = await store.chatbots()
        instances = await store.instances(now.timestamp())
        owners = await store.owners()
    finally:
        await store.close()
    # the daemon that runs, or else the last one that ran: its own view of its last polls; with
    # several on one state, each speaks for the chatbots it polls (the latest word wins)
    daemon = max(instances, key=lambda i: (i.alive, i.heartbeat), default=None)
    live: dict[str, Any] = daemon.status if daemon is not None else {}
    pid = daemon.pid if daemon is not None and daemon.alive else None
    views: dict[str, Any] = {}
    speaking = sorted((i for i in instances if i.alive), key=lambda i: i.heartbeat) or ([daemon] if daemon else [])
    for instance in speaking:
        views.update(instance.status.get("chatbots") or {})
    by_id = {i.id: f"{i.host} pid {i.pid}" for i in instances}
    chatbots = []
    for chatbot in config.chatbots:
        info = views.get(chatbot.name, {})
        last_poll, success = _moment(info.get("last_poll")), _moment(info.get("last_success"))
        if info:  # the last run's own view, judged as /readyz judges it
            problem = verdict(failures=int(info.get("failures") or 0), last_error=info.get("last_error"),
                              last_success=success, degraded=info.get("degraded"), interval=chatbot.interval,
                              now=now)
            result = "ok" if problem is None else problem
        else:  # no live status: the state file still says whether it was ever polled
            result = "baselined" if chatbot.serial_number in known else "never polled"
        chatbots.append({"name": chatbot.name, "serial_number": chatbot.serial_number,
                         "last_poll": last_poll and wording.iso(last_poll),
                         "last_success": success and wording.iso(success),
                         "result": result, "new_today": today.get(chatbot.serial_number, 0)}
                        | ({"owner": by_id.get(owners.get(chatbot.serial_number, ""), "none")} if owners else {}))
    sinks: list[dict[str, Any]] = []
    for name in [*config.sinks, *sorted(set(counts) - set(config.sinks))]:
        count = counts.get(name, SinkCounts())
        sinks.append({"name": name, "pending": count.pending, "held": count.held, "dead": count.dead}
                     | ({"note": "not in the config"} if name not in config.sinks else _hours(config.sinks[name], now)))
    written = _moment(live.get("written"))
    data: dict[str, Any] = {
        "now": wording.iso(now),
        "daemon": {"running": pid is not None, "pid": pid, "status_written": written and wording.iso(written),
                   "problems": live.get("problems", []) if pid is not None else []}
        | ({"host": daemon.host} if daemon is not None and config.state_url is not None else {}),
        "chatbots": chatbots, "sinks": sinks}
    if config.state_url is not None:  # every process that uses the database, and how many chatbots each polls
        data["instances"] = [{"id": i.id, "host": i.host, "pid": i.pid, "version": i.version, "alive": i.alive,
                              "heartbeat": wording.iso(i.heartbeat),
                              "chatbots": sum(owner == i.id for owner in owners.values())} for i in instances]
    return data


def print_status_json(data: dict[str, Any], out: IO[str]) -> None:
    print(safe_json(data, indent=2), file=scrubbed(out))


def _when_and_age(value: str | None, now: datetime) -> str:
    """`2026-11-24T20:10:50Z (12s ago)`, or `-`."""
    moment = _moment(value)
    return "-" if moment is None else f"{wording.iso(moment)} ({wording.age(moment, now)})"


def print_status(data: dict[str, Any], out: IO[str]) -> None:
    """The status table. Names come from the config and the state file, results from the live
    status file (the vendor's words): all are shown through safe_text, all output is scrubbed."""
    out = scrubbed(out)
    now = _moment(data.get("now")) or datetime.now(UTC)
    daemon = data["daemon"]
    written = daemon["status_written"]
    print(f"daemon: {'running, pid ' + str(daemon['pid']) if daemon['running'] else 'not running'}"
          + (f" (last status {_when_and_age(written, now).replace(' (', ', ').rstrip(')')})" if written else ""),
          file=out)
    owned = any("owner" in c for c in data["chatbots"])  # several instances share the state
    rows = [("CHATBOT", "LAST POLL (UTC)", "NEW TODAY", "RESULT", *(("POLLED BY",) if owned else ()))] + [
        (safe_text(c["name"], 40), _when_and_age(c["last_poll"], now), str(c["new_today"]),
         safe_text(c["result"], 80), *((safe_text(c.get("owner", "none"), 80),) if owned else ()))
        for c in data["chatbots"]]
    for problem in daemon.get("problems", []):
        print(f"problem: {safe_text(str(problem), 300)}", file=out)
    if data.get("instances"):
        table([("INSTANCE", "VERSION", "LAST HEARTBEAT (UTC)", "ALIVE", "CHATBOTS")] + [
            (safe_text(f"{i['host']} pid {i['pid']}", 80), safe_text(i["version"], 20),
             _when_and_age(i["heartbeat"], now), "yes" if i["alive"] else "no", str(i["chatbots"]))
            for i in data["instances"]], out)
        print(file=out)
    table(rows, out)
    print(file=out)
    table([("SINK", "PENDING", "HELD", "DEAD", "")] + [
        (safe_text(s["name"], 40), str(s["pending"]), str(s["held"]), str(s["dead"]), _sink_note(s))
        for s in data["sinks"]], out)
    if any(s["held"] for s in data["sinks"]):
        print("\nheld by the flood guard, or waiting for a sink's active hours (sent when they begin): "
              "`outbox list --held` to see them and why, `outbox retry --held` to send them now, "
              "`outbox purge --held` to drop them", file=out)


def _sink_note(sink: dict[str, Any]) -> str:
    """The last column of a sink's row: its note, and its active hours when it has some."""
    parts = [sink["note"]] if sink.get("note") else []
    if sink.get("active_hours") and not parts:
        parts.append(f"active hours {sink['active_hours']}")
    return "; ".join(parts)


def _hours(sink: SinkConfig, now: datetime) -> dict[str, str]:
    """A sink with active hours: which, and (outside them) until when its deliveries wait."""
    hours = sink.active_hours
    if hours is None:
        return {}
    found = {"active_hours": hours.describe()}
    if not hours.is_open(now):
        found["note"] = (f"outside active hours until {hours.next_open(now).astimezone(hours.zone):%a %H:%M} "
                         f"({hours.zone_name})")
    return found


def table(rows: Sequence[tuple[str, ...]], out: IO[str]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


async def outbox_list(config: Config, out: IO[str], *, state: Unsettled, sink: str | None,
                as_json: bool, limit: int = 1000) -> int:
    check_sink(config, sink)
    out = scrubbed(out)
    store = await open_state(config, "operator")
    try:
        rows = await store.outbox(state=state, sink=sink, limit=limit)
        counts = [c for name, c in (await store.sink_counts()).items() if sink in (None, name)]
    finally:
        await store.close()
    total = sum(getattr(c, state) for c in counts)
    held = sum(c.held for c in counts)
    if as_json:
        print(safe_json({"state": state, "sink": sink, "deliveries": [_as_dict(row) for row in rows],
                         "count": len(rows), "total": total, "limit": limit, "truncated": len(rows) < total}),
              file=out)
        return len(rows)
    lines = [("ID", "SINK", "ATTEMPTS", "NEXT (UTC)" if state == "pending" else "LAST (UTC)", "CHATBOT", "TYPE",
              "SESSION", "LAST ERROR")]
    for row in rows:
        lines.append((str(row.id), safe_text(row.sink, 40), str(row.attempts),
                      wording.iso(row.next_at if state == "pending" else row.updated_at),
                      safe_text(row.chatbot, 40), safe_text(row.type, 20), str(row.session_id),
                      safe_text(row.last_error or "", 100)))
    table(lines, out)
    shown = f"{len(rows)} of {total} {state} deliveries (the oldest; --limit shows more)" if len(rows) < total \
        else wording.plural(len(rows), f"{state} delivery", f"{state} deliveries")
    print(shown + (f" ({held} more held, by the flood guard or for active hours: --held)"
                   if state == "pending" and held else ""), file=out)
    return len(rows)


def _as_dict(row: OutboxRow) -> dict[str, Any]:
    return {"id": row.id, "sink": row.sink, "state": row.state, "attempts": row.attempts,
            "next_at": wording.iso(row.next_at), "updated_at": wording.iso(row.updated_at),
            "last_error": row.last_error, "chatbot": row.chatbot, "serial_number": row.serial, "type": row.type,
            "session_id": row.session_id, "created": wording.iso(from_micros(row.created_us)),
            "webhook_id": row.webhook_id}


async def outbox_retry(config: Config, out: IO[str], *, ids: list[int], state: Parked | None,
                 sink: str | None) -> int:
    """Deliveries due now with a fresh attempt budget: the ids given, every dead or held one (of
    --sink), or, with only --sink, that sink's pending ones. Ids that are not there, already
    delivered or of another sink are named, and the command fails (NotifierError) after the rest
    were made due."""
    check_sink(config, sink)
    if ids and state is not None:
        raise UsageError("give delivery IDs or --dead / --held, not both")
    if not ids and state is None and sink is None:
        raise UsageError("outbox retry needs delivery IDs, --dead, --held or --sink NAME (its pending deliveries)")
    store = await open_state(config, "operator")
    try:
        now = datetime.now(UTC).timestamp()
        if ids:
            result = await store.requeue_ids(now, ids, sink=sink)
            count = len(result.due)
        else:
            result = None
            count = await store.requeue(now, state=state or "pending", sink=sink)
        running = any(i.alive for i in await store.instances(now))
    finally:
        await store.close()
    what = {"dead": "dead ", "held": "held ", None: ""}[state] if not ids else ""
    them = "it" if count == 1 else "them"
    sender = (f"a running daemon sends {them} within 5 s" if running
              else f"no daemon is running: the next `run` or `once` sends {them}")
    print(f"{wording.plural(count, what + 'delivery', what + 'deliveries')} "
          f"{'is' if count == 1 else 'are'} due again" + (f" ({sender})" if count else ""), file=scrubbed(out))
    if result is not None:
        refused = [f"{', '.join(map(str, found))} {why}" for found, why in (
            (result.missing, "not found (no such delivery: see `outbox list`)"),
            (result.delivered, "already delivered (to send it again: `replay --sink NAME --session ID`)"),
            (result.other_sink, f"not a delivery of sink {sink!r}")) if found]
        if refused:
            raise NotifierError("not retried: " + "; ".join(refused))
    return count


async def outbox_purge(config: Config, out: IO[str], *, state: Parked, older_than_days: float | None,
                 sink: str | None) -> int:
    check_sink(config, sink)
    cutoff = None if older_than_days is None else (
        datetime.now(UTC) - timedelta(days=older_than_days)).timestamp()
    store = await open_state(config, "operator")
    try:
        count = await store.purge(state, cutoff, sink)
    finally:
        await store.close()
    what = wording.plural(count, "dead letter") if state == "dead" else wording.plural(count, "held delivery",
                                                                                          "held deliveries")
    print(f"{what} purged (their leads stay seen and are not notified again)", file=scrubbed(out))
    return count


async def state_forget(config: Config, out: IO[str], chatbot: str, *, yes: bool = False, dry_run: bool = False,
                 ask: Callable[[str], str] | None = None) -> int:
    """Drop a chatbot's seen keys so its next poll is a first run. Leads the outbox or the ledger
    refers to stay. On a terminal it asks first, unless `yes`; `dry_run` only counts.
    Returns the number of keys dropped (or that would be)."""
    store = await open_state(config, "operator")
    try:
        serial = resolve_chatbot(config, await store.chatbots(), chatbot)
        assert serial is not None
        name = safe_text(repr(chatbot), 80)
        count = await store.forget(serial, dry_run=True)
        if dry_run:
            print(f"would forget {_plural(count, 'seen lead')} of {name} (leads with deliveries or a ledger stay); "
                  "nothing changed", file=scrubbed(out))
            return count
        if not yes and ask is not None:
            answer = ask(f"Forget {_plural(count, 'seen lead')} of {name}? Its next poll is a first run again. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing changed", file=scrubbed(out))
                return 0
        count = await store.forget(serial)
    finally:
        await store.close()
    print(f"forgot {_plural(count, 'seen lead')} of {name}; its next poll is a first run again "
          "(first_run applies; leads with deliveries or a ledger stay, so none is notified twice)", file=scrubbed(out))
    return count


_plural = wording.plural


def resolve_chatbot(config: Config, known: dict[str, str], name: str | None) -> str | None:
    """A chatbot named by config name, serial, or (for one no longer configured) its stored name."""
    if name is None:
        return None
    configured = config.chatbot(name)
    if configured is not None:
        return configured.serial_number
    serial = next((s for s, stored in known.items() if name in (s, stored)), None)
    if serial is None:
        raise UsageError(f"no chatbot {name!r} in the config or the state file")
    return serial


def check_sink(config: Config, sink: str | None) -> None:
    if sink is not None and sink not in config.sinks:
        raise UsageError(f"no sink named {sink!r} (configured: {', '.join(sorted(config.sinks))})")
