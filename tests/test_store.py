from __future__ import annotations

import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from notifier.exceptions import StateError
from notifier.leads import parse_records
from notifier.store import Store

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)


def leads(*sessions: int):  # type: ignore[no-untyped-def]
    return parse_records("serial", [{"Type": "Lead", "SessionID": s, "CreateTime": "2025-03-01T10:00:00Z"}
                                    for s in sessions]).leads


def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_keys_and_outbox_in_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    a, b = leads(1, 2)
    queued = store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW,
                               notify=[(a, ("crm", "slack"))], silent=[b])
    assert queued == 2
    assert store.seen_since("serial", 0) == {(1, a.key.created_us), (2, b.key.created_us)}
    due = store.due(NOW.timestamp(), ["crm", "slack"], 10)
    assert sorted(d.sink for d in due) == ["crm", "slack"]
    assert {d.lead.key for d in due} == {a.key}
    store.mark_done([(due[0].id, "HTTP 200")], NOW.timestamp())
    store.mark_retry([due[1].id], NOW.timestamp(), NOW.timestamp() + 60, "503")
    assert store.due(NOW.timestamp(), ["crm", "slack"], 10) == []
    assert store.next_due(["crm", "slack"], after=NOW.timestamp()) == NOW.timestamp() + 60
    store.close()


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    (a,) = leads(1)

    class Boom(Exception):
        pass

    class BadSinks(tuple):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise Boom

    with pytest.raises(Boom):
        store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW,
                          notify=[(a, BadSinks())], silent=[])
    assert store.seen_since("serial", 0) == set()
    assert store.coverage("serial") is None
    store.close()


def test_prune_keeps_unsettled_deliveries(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    a, b, c = leads(1, 2, 3)
    store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW,
                      notify=[(a, ("crm",)), (b, ("crm",))], silent=[c])
    done = next(d for d in store.due(NOW.timestamp(), ["crm"], 10) if d.lead.key == a.key)
    store.mark_done([(done.id, None)], NOW.timestamp())
    assert store.prune("serial", a.key.created_us + 1) == 2  # a (done) and c (silent); b is pending
    assert store.seen_since("serial", 0) == {(2, b.key.created_us)}
    assert store.coverage("serial") == a.key.created_us + 1
    store.close()


def test_corrupt_file_is_reported_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    content = b"this is not a database" * 100
    path.write_bytes(content)
    before = path.stat().st_mtime_ns
    with pytest.raises(StateError, match="not a readable SQLite database"):
        Store(path)
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == before
    assert not (tmp_path / "state.db-wal").exists()


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER)")
    content = path.read_bytes()
    with pytest.raises(StateError, match="another program"):
        Store(path)
    assert path.read_bytes() == content


def test_second_instance_is_refused(tmp_path: Path) -> None:
    first = Store(tmp_path / "s.db")
    with pytest.raises(StateError, match=f"in use by another smarterbot-notifier \\(pid {os.getpid()}\\)"):
        Store(tmp_path / "s.db")
    reader = Store(tmp_path / "s.db", lock=False)  # admin commands read alongside
    reader.close()
    first.close()
    Store(tmp_path / "s.db").close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    with pytest.raises(StateError, match="cannot create state file"):
        Store(locked / "state.db")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a regular file"):
        Store(tmp_path)


V1_SCHEMA = """
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
INSERT INTO chatbots VALUES ('serial', 'bot', 0, 0);
INSERT INTO leads VALUES (1, 'serial', 7, 1740823200000000, 'bot', 'Lead',
    '{"Type": "Lead", "SessionID": 7, "CreateTime": "2025-03-01T10:00:00Z"}', '2025-03-01T10:00:01+00:00', 1);
INSERT INTO outbox VALUES (1, 1, 'crm', 'pending', 3, 0, '503', NULL, 0, 0);
PRAGMA application_id = 1396854321;
PRAGMA user_version = 1;
"""


def test_an_old_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    store = Store(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == 3
        indexes = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "outbox_pending" in indexes and "outbox_due" not in indexes
        [pending] = store.due(NOW.timestamp(), ["crm"], 10)  # the pending delivery survived, attempts and all
        assert (pending.lead.key.session_id, pending.attempts) == (7, 3)
        store.mark_done([(pending.id, "HTTP 200")], NOW.timestamp())
        assert store.db.execute("SELECT outcome, status, attempt FROM attempts").fetchall() == [
            ("delivered", "HTTP 200", 4)]
        store.db.execute("UPDATE outbox SET state = 'held'")  # the new state is allowed
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        store.close()


def test_a_version_2_file_gets_the_per_sink_due_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.executescript("DROP INDEX outbox_pending; CREATE INDEX outbox_due ON outbox (next_at) WHERE state = 'pending';"
                     "PRAGMA user_version = 2;")
    db.close()
    store = Store(path)
    try:
        indexes = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "outbox_pending" in indexes and "outbox_due" not in indexes
    finally:
        store.close()


def test_the_due_queries_read_the_index_not_the_backlog(tmp_path: Path) -> None:
    """A backlog of any size is never sorted per call: the plan walks the index in order."""
    store = Store(tmp_path / "s.db")
    try:
        store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW,
                          notify=[(lead, ("crm", "slack")) for lead in leads(*range(50))], silent=[])
        queries = [(Store.DUE_SQL, (NOW.timestamp(), 10)), (Store.NEXT_DUE_SQL, (NOW.timestamp(),))]
        for sql, args in queries:
            plan = store.db.execute("EXPLAIN QUERY PLAN " + sql.format(marks="?", only=""), ("crm", *args)).fetchall()
            text = " ".join(str(step[-1]) for step in plan)
            assert "outbox_pending" in text and "TEMP B-TREE" not in text, text
    finally:
        store.close()


def test_prune_drops_old_attempts_and_keeps_leads_for_the_ledger(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    (a,) = leads(1)
    store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW,
                      notify=[(a, ("crm",))], silent=[])
    [due] = store.due(NOW.timestamp(), ["crm"], 10)
    store.mark_retry([due.id], NOW.timestamp(), NOW.timestamp(), "503", "503")
    store.mark_done([(due.id, "HTTP 200")], NOW.timestamp() + 100)
    horizon = 2**62  # every key is out of every window
    assert store.prune("serial", horizon, ledger_before=NOW.timestamp() - 1) == 0  # still in the ledger
    assert store.prune("serial", horizon, ledger_before=NOW.timestamp() + 50) == 0  # detected before, attempted after
    assert store.db.execute("SELECT outcome FROM attempts").fetchall() == [("delivered",)]
    assert store.prune("serial", horizon, ledger_before=NOW.timestamp() + 3600) == 1
    assert store.db.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0
    store.close()


def test_a_file_deleted_since_the_last_beat_is_still_saved_at_close(tmp_path: Path) -> None:
    """Review: close() saved the daemon's copy only if a beat had already noticed the deletion."""
    store = Store(tmp_path / "s.db")
    (a,) = leads(1)
    store.record_poll(serial="serial", chatbot="bot", covered_from_us=0, detected_at=NOW,
                      notify=[(a, ("crm",))], silent=[])
    for path in tmp_path.glob("s.db*"):
        if not path.name.endswith(".lock"):
            path.unlink()
    store.close()
    again = Store(tmp_path / "s.db")
    try:
        assert [d.lead.key for d in again.due(NOW.timestamp(), ["crm"], 10)] == [a.key]
    finally:
        again.close()
