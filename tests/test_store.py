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
