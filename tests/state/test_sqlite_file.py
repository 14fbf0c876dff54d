"""The SQLite engine's file: created private, a foreign, damaged or newer file refused and left
untouched, one daemon per file, the file deleted under a running daemon saved at close, old
files (schema 1 to 3) upgraded in place to schema 4, and the due queries served by the index.
What every engine does alike (claim, settle, prune, operator verbs) is the contract suite's."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import sqlite3
import stat
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from notifier.exceptions import StateError, StateMissing
from notifier.leads import parse_records
from notifier.state import LeadQuery, Outcome, PollRecord
from notifier.state.sqlite import SQLiteState, lock_path
from notifier.state.sqlite.deliveries import _ANY_DUE, _DUE
from notifier.state.sqlite.schema import SCHEMA_VERSION, migrate
from notifier.state.times import us
from notifier.types import Delivery, Lead, LeadKey

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
LEASE = 60.0


def leads(*sessions: int) -> list[Lead]:
    return parse_records("serial", [{"Type": "Lead", "SessionID": s, "CreateTime": "2025-03-01T10:00:00Z"}
                                    for s in sessions]).leads


def found(notify: Sequence[tuple[Lead, Collection[str]]], silent: Sequence[Lead] = (), *,
          batches: Collection[str] = ()) -> PollRecord:
    return PollRecord(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW, notify=notify,
                      silent=silent, batches=batches)


async def claim_all(state: SQLiteState, sinks: Collection[str], now: float = NOW.timestamp()) -> list[Delivery]:
    groups = await state.claim(now, dict.fromkeys(sinks, 1000), lease=LEASE)
    return [delivery for group in groups for delivery in group]


# -- the file itself ----------------------------------------------------------------------
async def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    await SQLiteState(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    """A poll whose write fails half-way (here: after its seen keys, while queueing its
    deliveries) raises to its caller and leaves neither keys nor coverage behind."""
    state = SQLiteState(tmp_path / "s.db")
    (a,) = leads(1)

    class Boom(Exception):
        pass

    class BadSinks(tuple):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise Boom

    try:
        with pytest.raises(Boom):
            # bounded: whatever fails, the poll must hear of it, never wait for ever
            await asyncio.wait_for(state.record_poll(found([(a, BadSinks())])), timeout=5)
        assert await state.seen_since("serial", 0) == set()
        assert await state.coverage("serial") is None
    finally:
        await state.close()


async def test_corrupt_file_is_reported_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    content = b"this is not a database" * 100
    path.write_bytes(content)
    before = path.stat().st_mtime_ns
    with pytest.raises(StateError, match="not a readable SQLite database"):
        SQLiteState(path)
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == before
    assert not (tmp_path / "state.db-wal").exists()


async def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER)")
    content = path.read_bytes()
    with pytest.raises(StateError, match="another program"):
        SQLiteState(path)
    assert path.read_bytes() == content


async def test_a_file_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await SQLiteState(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 5")
    db.close()
    content = path.read_bytes()
    with pytest.raises(StateError, match=r"newer smarterbot-notifier \(schema 5 > 4\)"):
        SQLiteState(path)
    with pytest.raises(StateError, match="newer"):
        SQLiteState(path, "operator")
    assert path.read_bytes() == content


async def test_second_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = SQLiteState(path)
    try:
        with pytest.raises(StateError, match=f"in use by another smarterbot-notifier \\(pid {os.getpid()}\\)"):
            SQLiteState(path)
        with pytest.raises(StateError, match="in use by another smarterbot-notifier"):
            SQLiteState(path, "sender")  # a sending `replay` would deliver beside the daemon
        await SQLiteState(path, "operator").close()  # operator commands read alongside
    finally:
        await first.close()
    await SQLiteState(path).close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    with pytest.raises(StateError, match="cannot create state file"):
        SQLiteState(locked / "state.db")


async def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a regular file"):
        SQLiteState(tmp_path)


async def test_a_file_deleted_since_the_last_beat_is_still_saved_at_close(tmp_path: Path) -> None:
    """Review: close() saved the daemon's copy only if a beat had already noticed the deletion."""
    state = SQLiteState(tmp_path / "s.db")
    (a,) = leads(1)
    await state.record_poll(found([(a, ("crm",))]))
    for path in tmp_path.glob("s.db*"):
        if not path.name.endswith(".lock"):
            path.unlink()
    await state.close()
    again = SQLiteState(tmp_path / "s.db")
    try:
        assert [d.lead.key for d in await claim_all(again, ["crm"])] == [a.key]
    finally:
        await again.close()


async def test_prune_drops_old_attempts_and_keeps_leads_for_the_ledger(tmp_path: Path) -> None:
    state = SQLiteState(tmp_path / "s.db")
    try:
        (a,) = leads(1)
        await state.record_poll(found([(a, ("crm",))]))
        (due,) = await claim_all(state, ["crm"])
        await state.settle([Outcome((due.id,), "retry", NOW.timestamp(), next_at=NOW.timestamp(), detail="503",
                                    status="503")])
        (due,) = await claim_all(state, ["crm"])
        await state.settle([Outcome((due.id,), "done", NOW.timestamp() + 100, detail="HTTP 200")])
        db = state.file.db
        horizon = 2**62  # every key is out of every window
        assert await state.prune("serial", horizon, ledger_before=NOW.timestamp() - 1) == 0  # still in the ledger
        assert await state.prune("serial", horizon, ledger_before=NOW.timestamp() + 50) == 0  # attempted after
        assert db.execute("SELECT outcome FROM attempts").fetchall() == [("delivered",)]
        assert await state.prune("serial", horizon, ledger_before=NOW.timestamp() + 3600) == 1
        assert db.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0
    finally:
        await state.close()


# -- old files, upgraded in place -----------------------------------------------------------
V1_LAYOUT = """
CREATE TABLE chatbots (serial TEXT PRIMARY KEY, name TEXT NOT NULL, covered_from_us INTEGER NOT NULL,
    first_seen REAL NOT NULL);
CREATE TABLE leads (id INTEGER PRIMARY KEY, serial TEXT NOT NULL, session_id INTEGER NOT NULL,
    created_us INTEGER NOT NULL, chatbot TEXT NOT NULL, type TEXT NOT NULL, raw TEXT NOT NULL,
    detected_at TEXT NOT NULL, notified INTEGER NOT NULL, UNIQUE (serial, session_id, created_us));
CREATE INDEX leads_by_time ON leads (serial, created_us);
CREATE TABLE outbox (id INTEGER PRIMARY KEY, lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT, batch INTEGER,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, UNIQUE (lead_id, sink));
CREATE INDEX outbox_due ON outbox (next_at) WHERE state = 'pending';
CREATE INDEX outbox_by_sink ON outbox (sink, state);
PRAGMA application_id = 1396854321;
PRAGMA user_version = 1;
"""
# Versions 2 and 3, as the notifier created them: every time a REAL of Unix seconds, except the
# leads' detected_at, ISO text. Version 2 found due deliveries by an index over all sinks.
V3_LAYOUT = """
CREATE TABLE chatbots (serial TEXT PRIMARY KEY, name TEXT NOT NULL, covered_from_us INTEGER NOT NULL,
    first_seen REAL NOT NULL);
CREATE TABLE leads (id INTEGER PRIMARY KEY, serial TEXT NOT NULL, session_id INTEGER NOT NULL,
    created_us INTEGER NOT NULL, chatbot TEXT NOT NULL, type TEXT NOT NULL, raw TEXT NOT NULL,
    detected_at TEXT NOT NULL, notified INTEGER NOT NULL, UNIQUE (serial, session_id, created_us));
CREATE INDEX leads_by_time ON leads (serial, created_us);
CREATE TABLE outbox (id INTEGER PRIMARY KEY, lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('pending', 'held', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT, batch INTEGER,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, UNIQUE (lead_id, sink));
CREATE INDEX outbox_pending ON outbox (sink, next_at) WHERE state = 'pending';
CREATE INDEX outbox_by_sink ON outbox (sink, state);
CREATE TABLE attempts (id INTEGER PRIMARY KEY, lead_id INTEGER NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sink TEXT NOT NULL, at REAL NOT NULL, attempt INTEGER NOT NULL, outcome TEXT NOT NULL, status TEXT,
    detail TEXT);
CREATE INDEX attempts_by_lead ON attempts (lead_id);
CREATE INDEX attempts_by_time ON attempts (at);
PRAGMA application_id = 1396854321;
PRAGMA user_version = 3;
"""
V2_LAYOUT = (V3_LAYOUT.replace("CREATE INDEX outbox_pending ON outbox (sink, next_at)",
                               "CREATE INDEX outbox_due ON outbox (next_at)")
             .replace("user_version = 3", "user_version = 2"))
LAYOUTS = {1: V1_LAYOUT, 2: V2_LAYOUT, 3: V3_LAYOUT}
RAW_7 = '{"Type": "Lead", "SessionID": 7, "CreateTime": "2025-03-01T10:00:00Z"}'


def old_file(path: Path, version: int, rows: str = "") -> None:
    db = sqlite3.connect(path)
    db.executescript(LAYOUTS[version] + rows)
    db.close()


def layout(db: sqlite3.Connection) -> dict[str, object]:
    """The schema as SQLite understands it (columns, keys, checks, indexes), not its text: a
    rebuilt and renamed table reads `CREATE TABLE "outbox"` where a new one reads `outbox`."""
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    found: dict[str, object] = {"version": db.execute("PRAGMA user_version").fetchone()[0],
                                "application_id": db.execute("PRAGMA application_id").fetchone()[0],
                                "tables": tables}
    for table in tables:
        found[f"columns {table}"] = db.execute(f"PRAGMA table_info({table})").fetchall()
        found[f"keys {table}"] = db.execute(f"PRAGMA foreign_key_list({table})").fetchall()
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        found[f"checks {table}"] = re.findall(r"CHECK\s*\((?:[^()]|\([^()]*\))*\)", sql)
    found["indexes"] = db.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' "
                                  "ORDER BY name").fetchall()
    return found


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_an_old_file_is_upgraded_in_place(tmp_path: Path, version: int) -> None:
    """Into exactly the schema a new file gets: columns, keys, checks and indexes."""
    await SQLiteState(tmp_path / "new.db").close()
    with sqlite3.connect(tmp_path / "new.db") as fresh:
        expected = layout(fresh)
    fresh.close()
    assert expected["version"] == 4
    path = tmp_path / "old.db"
    old_file(path, version)
    state = SQLiteState(path)
    try:
        assert layout(state.file.db) == expected
        assert state.file.db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert state.file.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        await state.close()


async def test_a_version_1_file_keeps_its_pending_delivery(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old_file(path, 1, f"""
        INSERT INTO chatbots VALUES ('serial', 'bot', 0, 0);
        INSERT INTO leads VALUES (1, 'serial', 7, 1740823200000000, 'bot', 'Lead', '{RAW_7}',
            '2025-03-01T10:00:01+00:00', 1);
        INSERT INTO outbox VALUES (1, 1, 'crm', 'pending', 3, 0, '503', NULL, 0, 0);""")
    state = SQLiteState(path)
    try:
        assert state.file.db.execute("PRAGMA user_version").fetchone()[0] == 4
        (pending,) = await claim_all(state, ["crm"])  # the pending delivery survived, attempts and all
        assert (pending.id, pending.lead.key.session_id, pending.attempts) == (1, 7, 3)
        assert pending.detected_at == datetime(2025, 3, 1, 10, 0, 1, tzinfo=UTC)
        await state.settle([Outcome((pending.id,), "done", NOW.timestamp(), detail="HTTP 200")])
        assert state.file.db.execute("SELECT outcome, status, attempt FROM attempts").fetchall() == [
            ("delivered", "HTTP 200", 4)]
        state.file.db.execute("UPDATE outbox SET state = 'held'")  # the state added in version 2 is allowed
        assert state.file.db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        await state.close()


async def test_a_version_2_file_gets_the_per_sink_due_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old_file(path, 2)
    state = SQLiteState(path)
    try:
        indexes = {row[0] for row in state.file.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "outbox_pending" in indexes and "outbox_due" not in indexes
    finally:
        await state.close()


# One instant per column, each with microseconds a float must keep: 2025-03-01T10:00:00Z is
# 1740823200. detected_at was ISO text: one in UTC, one at +02:00 (the instant counts, not the text).
V3_ROWS = f"""
INSERT INTO chatbots VALUES ('serial', 'bot', 1740700000000000, 1740823201.123456);
INSERT INTO leads VALUES (5, 'serial', 7, 1740823200000000, 'bot', 'Lead', '{RAW_7}',
    '2025-03-01T10:00:01.654321+00:00', 1);
INSERT INTO leads VALUES (6, 'serial', 8, 1740823200000001, 'bot', 'Lead',
    '{{"Type": "Lead", "SessionID": 8, "CreateTime": 1740823200000001}}', '2025-03-01T12:00:02.000007+02:00', 1);
INSERT INTO outbox VALUES (41, 5, 'crm', 'pending', 2, 1740823260.250001, 'answered 503', NULL,
    1740823201.654321, 1740823230.000123);
INSERT INTO outbox VALUES (42, 5, 'digest', 'done', 1, 1740823201.5, NULL, 7, 1740823201.654321, 1740823203.25);
INSERT INTO outbox VALUES (43, 6, 'digest', 'done', 1, 1740823201.5, NULL, 3, 1740823202.000007, 1740823203.25);
INSERT INTO attempts VALUES (9, 5, 'crm', 1740823220.000001, 1, 'retry', '503', 'answered 503');
INSERT INTO attempts VALUES (10, 5, 'crm', 1740823230.000123, 2, 'retry', '503', 'answered 503');
INSERT INTO attempts VALUES (11, 5, 'digest', 1740823203.25, 1, 'delivered', 'HTTP 200', NULL);
"""


async def test_a_version_3_file_gets_integer_microseconds_for_the_same_instants(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old_file(path, 3, V3_ROWS)
    state = SQLiteState(path)
    try:
        db = state.file.db
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4
        snapshot = await state.export()
        assert snapshot.chatbots == [("serial", "bot", 1740700000000000, 1740823201123456)]
        assert [(row[0], row[7]) for row in snapshot.leads] == [(5, 1740823201654321), (6, 1740823202000007)]
        assert snapshot.outbox == [
            (41, 5, "crm", "pending", 2, 1740823260250001, "answered 503", None, 1740823201654321, 1740823230000123),
            (42, 5, "digest", "done", 1, 1740823201500000, None, 7, 1740823201654321, 1740823203250000),
            (43, 6, "digest", "done", 1, 1740823201500000, None, 3, 1740823202000007, 1740823203250000)]
        assert [(row[0], row[3]) for row in snapshot.attempts] == [
            (9, 1740823220000001), (10, 1740823230000123), (11, 1740823203250000)]
        stored = db.execute(
            "SELECT (SELECT group_concat(DISTINCT typeof(first_seen_us)) FROM chatbots), "
            "(SELECT group_concat(DISTINCT typeof(detected_at_us)) FROM leads), "
            "(SELECT group_concat(DISTINCT typeof(next_at_us) || typeof(created_at_us) || typeof(updated_at_us)) "
            "FROM outbox), (SELECT group_concat(DISTINCT typeof(at_us)) FROM attempts)").fetchone()
        assert stored == ("integer", "integer", "integerintegerinteger", "integer")
        # and as the interface reads them
        records = {r.id: r for r in await state.find_leads(LeadQuery(), with_attempts=True)}
        assert (records[5].detected_at, records[6].detected_at) == (1740823201.654321, 1740823202.000007)
        assert [a.at for a in records[5].attempts] == [1740823203.25, 1740823220.000001, 1740823230.000123]
        (row,) = await state.outbox(state="pending")
        assert (row.id, row.attempts, row.next_at, row.updated_at, row.last_error) == (
            41, 2, 1740823260.250001, 1740823230.000123, "answered 503")
        assert row.webhook_id == LeadKey("serial", 7, 1740823200000000).webhook_id()
        # the pending delivery is due at its instant, not a microsecond before, with the same id
        assert await state.claim(1740823260.25, {"crm": 10}, lease=LEASE) == []
        (pending,) = await claim_all(state, ["crm"], now=1740823260.250001)
        assert (pending.id, pending.attempts, pending.lead.key) == (41, 2, LeadKey("serial", 7, 1740823200000000))
        assert pending.detected_at == datetime(2025, 3, 1, 10, 0, 1, 654321, tzinfo=UTC)
        await state.settle([Outcome((41,), "done", 1740823261.0, detail="HTTP 200")])
        assert [(a.attempt, a.outcome) for a in (await state.find_leads(LeadQuery(lead_ids=[5]),
                                                                        with_attempts=True))[0].attempts
                if a.sink == "crm"] == [(1, "retry"), (2, "retry"), (3, "delivered")]
        # a new digest's batch id comes after every batch of the old file (max 7), never one of them
        a, b = leads(20, 21)
        await state.record_poll(found([(a, ("digest",)), (b, ("digest",))], batches=("digest",)))
        digest = await claim_all(state, ["digest"])
        assert len(digest) == 2 and digest[0].batch == digest[1].batch
        assert digest[0].batch is not None and digest[0].batch > 7
    finally:
        await state.close()


# -- the due queries read the index, not the backlog ----------------------------------------
def plan(db: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> str:
    return " ".join(str(step[-1]) for step in db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())


async def backlog(path: Path) -> SQLiteState:
    state = SQLiteState(path)
    await state.record_poll(found([(lead, ("crm", "slack")) for lead in leads(*range(50))]))
    return state


async def test_the_claim_query_reads_the_index_not_the_backlog(tmp_path: Path) -> None:
    """A backlog of any size is never sorted per call: the plan walks the index in order."""
    state = await backlog(tmp_path / "s.db")
    try:
        now_us = us(NOW.timestamp())
        for sql, params in ((_DUE.format(only=""), ("crm", now_us, 10)), (_ANY_DUE.format(only=""), ("crm", now_us))):
            text = plan(state.file.db, sql, params)
            assert "outbox_pending" in text and "TEMP B-TREE" not in text, text
    finally:
        await state.close()


async def test_every_read_of_claim_and_next_due_uses_the_index(tmp_path: Path) -> None:
    """The statements the state really runs, as SQLite's trace gives them (values bound)."""
    state = await backlog(tmp_path / "s.db")
    db = state.file.db
    statements: list[str] = []
    try:
        db.set_trace_callback(statements.append)
        assert len(await state.claim(NOW.timestamp(), {"crm": 10}, lease=LEASE)) == 10
        assert await state.next_due(["crm"]) == NOW.timestamp()
        assert await state.next_due(["crm"], after=NOW.timestamp()) == NOW.timestamp() + LEASE
        db.set_trace_callback(None)
        reads = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
        assert len(reads) >= 4, statements  # anything due, the claim, and both next_due
        for sql in reads:
            text = plan(db, sql)
            assert "outbox_pending" in text and "TEMP B-TREE" not in text, (sql, text)
    finally:
        db.set_trace_callback(None)
        await state.close()


class _MigratedMeanwhile:
    """A connection whose migration meets another process's: the other migrates the file between
    our first look at its version and our write lock (a command started beside a first start)."""

    def __init__(self, db: sqlite3.Connection, other: sqlite3.Connection) -> None:
        self.db, self.other, self.raced = db, other, False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "BEGIN IMMEDIATE" and not self.raced:
            self.raced = True
            migrate(self.other)
        return self.db.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction


def test_a_file_migrated_meanwhile_by_another_process_is_not_migrated_twice(tmp_path: Path) -> None:
    """CI found it: "table chatbots already exists" when `status` opened the file the daemon was
    creating at that moment; the version is now read again under the write lock."""
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as ours, \
            contextlib.closing(sqlite3.connect(path, isolation_level=None)) as theirs:
        migrate(_MigratedMeanwhile(ours, theirs))  # type: ignore[arg-type]
        assert ours.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_reader_never_creates_the_schema_of_a_file_just_created(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch()  # the daemon's first instant: the file, nothing in it yet
    with pytest.raises(StateMissing):
        SQLiteState(path, "operator")
    assert path.stat().st_size == 0


async def test_an_old_file_is_never_upgraded_under_a_daemon_running_on_it(tmp_path: Path) -> None:
    """The third review's finding: `status` of a new version beside a running older daemon upgraded
    the file, and the old daemon went on running, recording and sending nothing."""
    path = tmp_path / "state.db"
    old_file(path, 3)
    before = path.read_bytes()
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)  # what the older daemon holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, str(os.getpid()).encode())
        for role in ("operator", "daemon"):
            with pytest.raises(StateError, match="older version"):
                SQLiteState(path, role)
        assert path.read_bytes() == before
    finally:
        os.close(fd)
    state = SQLiteState(path)  # the older daemon stopped: the file is upgraded
    try:
        assert state.file.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        await state.close()


async def test_a_delivery_claimed_by_a_process_gone_is_exported_as_due_now(tmp_path: Path) -> None:
    """The third review's finding: `state migrate` of a file whose daemon was killed mid-send
    copied the lease's end without the claim, and nothing on PostgreSQL released it for 3 minutes."""
    state = SQLiteState(tmp_path / "state.db")
    try:
        record = {"Type": "Lead", "SessionID": 1, "CreateTime": "2026-11-25T10:00:00Z"}
        lead = parse_records("serial", [record]).leads[0]
        await state.record_poll(PollRecord(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW,
                                           notify=[(lead, ("crm",))], silent=[]))
        wall = datetime.now(UTC).timestamp()
        assert len(await state.claim(wall, {"crm": 1}, lease=3600)) == 1  # the lease would run an hour
        (row,) = (await state.export()).outbox
        assert row[5] <= us(datetime.now(UTC).timestamp())  # next_at_us: due now
    finally:
        await state.close()
