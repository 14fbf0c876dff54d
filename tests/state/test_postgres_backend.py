"""What only the PostgreSQL engine does (the contract both engines keep is in test_contract_*):
migrations when several instances start at once, refusing a database it must not touch, never
showing the password, noticing other processes' changes without asking, releasing the claims
of instances that are gone (and only theirs), and surviving the server killing its connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from notifier.exceptions import StateError, StateUnavailable
from notifier.state import PollRecord, SinkCounts
from notifier.state.postgres import PostgresState
from notifier.state.postgres.processes import PROCESS_TABLE
from notifier.state.postgres.schema import MARKER, SCHEMA_VERSION

from ..conftest import until
from .engines import LEASE, dead, done, flat, lead
from .engines import poll as poll_at_t0
from .pg import ADMIN_URL, database_url, direct_url, disconnect_everyone, fresh_database, run_sql
from .proxy import FreezingProxy

PASSWORD = "s3cret-Pa55w0rd"  # the server trusts every local connection: any password is accepted


@pytest.fixture(name="url")
async def url_fixture() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.fixture(name="opened")
async def opened_fixture() -> AsyncIterator[list[PostgresState]]:
    """States a test opens, closed at its end (before its database is dropped)."""
    states: list[PostgresState] = []
    yield states
    for state in states:
        await state.close()


def poll(at: float, *args: Any, **kwargs: Any) -> PollRecord:
    """A poll detected `at` (the real time: the instances' liveness is judged by it), its
    deliveries due then."""
    return poll_at_t0(*args, detected_at=datetime.fromtimestamp(at, UTC), **kwargs)


def wall() -> float:
    """The real time, in whole seconds: exact as a float, so a poll detected then is due then."""
    return float(int(time.time()))


def with_password(url: str) -> str:
    """The database on the server itself (a pooler would hide a killed connection), with a password."""
    return database_url(url.rsplit("/", 1)[1], password=PASSWORD)


async def tables(url: str) -> list[str]:
    return [row[0] for row in await run_sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                                 "ORDER BY tablename")]


# -- the schema ---------------------------------------------------------------------------
async def test_instances_starting_at_once_create_the_schema_once(url: str, opened: list[PostgresState]) -> None:
    states = await asyncio.gather(*(PostgresState.open(url, "daemon") for _ in range(4)))
    opened.extend(states)
    assert await run_sql(url, f"SELECT version FROM {MARKER}") == [(SCHEMA_VERSION,)]
    assert [await state.schema_state() for state in states] == [f"current (schema {SCHEMA_VERSION})"] * 4
    assert len({state.instance for state in states}) == 4
    await states[0].record_poll(poll(wall(), [(lead(1), ("crm",))]))
    assert await states[3].sink_counts() == {"crm": SinkCounts(pending=1)}


async def test_a_newer_schema_is_refused_and_left_untouched(url: str) -> None:
    await (await PostgresState.open(url, "daemon")).close()
    await run_sql(url, f"UPDATE {MARKER} SET version = %s", (SCHEMA_VERSION + 1,))
    for role in ("daemon", "operator", "sender"):
        newer = rf"newer smarterbot-notifier \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\)"
        with pytest.raises(StateError, match=newer) as raised:
            await PostgresState.open(url, role)
        assert not isinstance(raised.value, StateUnavailable)
    assert await run_sql(url, f"SELECT version FROM {MARKER}") == [(SCHEMA_VERSION + 1,)]


async def test_an_operator_never_creates_the_state(url: str) -> None:
    for role in ("operator", "sender"):
        with pytest.raises(StateError, match=r"has no smarterbot-notifier state yet \(`run` or `once` creates it\)"):
            await PostgresState.open(url, role)
    assert await tables(url) == []


async def test_a_database_holding_tables_like_ours_is_refused(url: str) -> None:
    await run_sql(url, "CREATE TABLE leads (id integer PRIMARY KEY, who text)")
    await run_sql(url, "INSERT INTO leads VALUES (1, 'theirs')")
    with pytest.raises(StateError, match=r"holds leads but no smarterbot_notifier_schema table.*another program"):
        await PostgresState.open(url, "daemon")
    assert await tables(url) == ["leads"]
    assert await run_sql(url, "SELECT * FROM leads") == [(1, "theirs")]


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("port", [1, None])
async def test_the_password_is_never_in_a_message(url: str, port: int | None) -> None:
    """Nothing listens on port 1; on the real port, the database does not exist."""
    name = "no_such_database" if port is None else url.rsplit("/", 1)[1]
    secret = "p%40ss-" + PASSWORD  # percent-encoded in the URL, "p@ss-…" as libpq sends it
    target = database_url(name, password=secret, port=port)
    with pytest.raises(StateError) as raised:
        await PostgresState.open(target, "daemon")
    message = str(raised.value)
    assert PASSWORD not in message and "p@ss" not in message and secret not in message
    assert "cannot reach the state database postgresql://postgres@127.0.0.1:" in message
    assert (":1/" in message) if port == 1 else ("no_such_database" in message)
    assert not isinstance(raised.value, psycopg.Error)


async def test_killed_connections_are_unavailable_then_replaced(url: str, opened: list[PostgresState]) -> None:
    state = await PostgresState.open(with_password(url), "daemon")
    opened.append(state)
    assert PASSWORD not in state.description
    now = wall()
    await state.record_poll(poll(now, [(lead(1), ("crm",))]))
    listened = state.changed_elsewhere()
    assert await disconnect_everyone(url) >= 2  # the pool's connection, and the listener's
    with pytest.raises(StateUnavailable) as raised:
        await state.sink_counts()
    assert not isinstance(raised.value, psycopg.Error)
    assert "counting deliveries failed" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert await state.sink_counts() == {"crm": SinkCounts(pending=1)}  # the next call has a new connection
    await until(lambda: state.changed_elsewhere() != listened)  # the listener is back, and says so
    await state.record_poll(poll(now, [(lead(2), ("crm",))]))
    assert len(flat(await state.claim(now, {"crm": 10}, lease=LEASE))) == 2


async def test_a_call_that_hangs_is_unavailable_at_its_deadline(url: str, opened: list[PostgresState]) -> None:
    state = await PostgresState.open(url, "daemon")
    opened.append(state)
    state.deadline = 0.5
    async with await psycopg.AsyncConnection.connect(direct_url(url)) as other:
        await other.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")  # held until its transaction ends
        with pytest.raises(StateUnavailable, match=r"counting deliveries failed: no answer within 0\.5 s"):
            await state.sink_counts()
    assert await state.sink_counts() == {}


async def test_closing_when_the_database_is_gone_raises_nothing(url: str) -> None:
    state = await PostgresState.open(url, "daemon")
    state.deadline = 1.0  # behind PgBouncer a call waits for the server (its query_wait_timeout)
    await run_sql(ADMIN_URL, f"ALTER DATABASE {url.rsplit('/', 1)[1]} ALLOW_CONNECTIONS false")  # not even for us
    await disconnect_everyone(url)
    with pytest.raises(StateUnavailable):
        await state.sink_counts()
    async with asyncio.timeout(10):
        await state.close()
        await state.close()


# -- other processes ----------------------------------------------------------------------
async def test_an_operator_change_reaches_a_daemon_without_asking(url: str, opened: list[PostgresState]) -> None:
    daemon = await PostgresState.open(direct_url(url), "daemon")  # LISTEN needs the server itself
    operator = await PostgresState.open(url, "operator")
    opened += [daemon, operator]
    now = wall()
    await daemon.record_poll(poll(now, [(lead(1), ("crm",))]))
    (delivery,) = flat(await daemon.claim(now, {"crm": 1}, lease=LEASE))
    await daemon.settle([dead(delivery.id, at=now)])
    await operator.sink_counts()  # reads announce nothing
    await operator.forget("no such chatbot", dry_run=True)
    before = daemon.changed_elsewhere()
    assert operator.changed_elsewhere() == operator.changed_elsewhere()  # operators do not listen
    assert await operator.requeue(now, state="dead") == 1
    await until(lambda: daemon.changed_elsewhere() != before)
    assert [d.id for d in flat(await daemon.claim(now, {"crm": 1}, lease=LEASE))] == [delivery.id]


async def test_instances_claiming_at_once_never_take_the_same_delivery(url: str, opened: list[PostgresState]) -> None:
    states = [await PostgresState.open(url, "daemon") for _ in range(3)]
    opened += states
    now = wall()
    await states[0].record_poll(poll(now, [(lead(n), ("crm", "slack")) for n in range(1, 101)]))
    claimed: list[int] = []
    for _ in range(20):  # bounded: each round takes up to 36 of the 200
        rounds = await asyncio.gather(*(state.claim(now, {"crm": 7, "slack": 5}, lease=LEASE) for state in states))
        found = [d.id for groups in rounds for d in flat(groups)]
        if not found:
            break
        claimed += found
    assert len(claimed) == len(set(claimed)) == 200


async def age(url: str, state: PostgresState, seconds: float) -> None:
    """An instance that stopped showing signs of life `seconds` ago (killed, or cut off): its row
    as it would be then, on the server's clock (the one liveness is judged by)."""
    await run_sql(url, "UPDATE instances SET seen_us = seen_us - %s WHERE id = %s",
                  (int(seconds * 1_000_000), state.instance))


async def test_claims_of_an_instance_gone_are_released_and_live_ones_kept(
        url: str, opened: list[PostgresState]) -> None:
    gone, live, starting = [await PostgresState.open(url, "daemon") for _ in range(3)]
    opened += [gone, live, starting]
    now = wall()
    await gone.record_poll(poll(now, [(lead(n), ("crm",)) for n in range(1, 7)]))
    by_gone = {d.id for d in flat(await gone.claim(now, {"crm": 2}, lease=LEASE))}
    by_live = {d.id for d in flat(await live.claim(now, {"crm": 2}, lease=LEASE))}
    by_starting = {d.id for d in flat(await starting.claim(now, {"crm": 2}, lease=LEASE))}
    assert len(by_gone | by_live | by_starting) == 6  # SKIP LOCKED and leases: nobody took another's
    await gone.heartbeat(now, {"chatbots": 1})
    await live.heartbeat(now, {"chatbots": 2})
    await age(url, gone, 100)  # its last sign of life, long ago: it was killed

    assert await starting.release_claims(now) == 2
    alive = {i.id: i.alive for i in await starting.instances(now)}
    assert alive == {gone.instance: False, live.instance: True, starting.instance: True}
    assert {d.id for d in flat(await starting.claim(now, {"crm": 10}, lease=LEASE))} == by_gone
    # later the live one stopped too: its claims are released, never this process's own
    await age(url, live, 100)
    assert await starting.release_claims(now + 1) == 2
    due = {row.id: row.next_at for row in await starting.outbox(state="pending")}
    assert {i for i, at in due.items() if at == now + 1} == by_live
    assert {i for i, at in due.items() if at == now + LEASE} == by_gone | by_starting


async def test_whether_an_instance_lives_does_not_depend_on_whose_clock_judges(
        url: str, opened: list[PostgresState]) -> None:
    """Hosts whose clocks disagree: one 1000 s behind (its heartbeats carry its own time), one
    1000 s ahead (it judges the others). Judged by the hosts' clocks the first looked dead and its
    claims, still being sent, were released to be sent again; on the server's clock it lives."""
    behind, ahead = [await PostgresState.open(url, "daemon") for _ in range(2)]
    opened += [behind, ahead]
    now = wall()
    await behind.record_poll(poll(now - 1000, [(lead(1), ("crm",))]))
    claimed = flat(await behind.claim(now - 1000, {"crm": 1}, lease=LEASE))
    await behind.heartbeat(now - 1000, {"chatbots": 1})
    assert await ahead.release_claims(now + 1000) == 0
    assert {i.id: i.alive for i in await ahead.instances(now + 1000)} == {behind.instance: True, ahead.instance: True}
    await behind.settle([done(claimed[0].id, at=now - 999)])
    assert await ahead.sink_counts() == {"crm": SinkCounts(done=1)}
    assert behind.clock_offset is not None and abs(behind.clock_offset) < 5  # the same host: the real clocks agree


async def test_a_version_1_database_is_upgraded_and_its_instances_judged_as_before(
        url: str, opened: list[PostgresState]) -> None:
    """Version 2 added `instances.seen_us`. An instance still running version 1 during a rolling
    upgrade never writes it: it is judged by its own heartbeat (else a new instance would take it
    for dead and release its claims while it sends them)."""
    first = await PostgresState.open(url, "daemon")
    await first.close()
    await run_sql(url, "ALTER TABLE instances DROP COLUMN seen_us, DROP COLUMN owning_count, DROP COLUMN wanting")
    await run_sql(url, "DROP INDEX owners_by_instance")
    await run_sql(url, f"UPDATE {MARKER} SET version = 1")
    await run_sql(url, "INSERT INTO instances (id, host, pid, version, started_us, heartbeat_us) "
                       "VALUES ('old:1:a', 'old', 1, '0.9', %s, %s)", (int(wall() * 1e6),) * 2)
    upgraded = await PostgresState.open(url, "daemon")
    opened.append(upgraded)
    assert await run_sql(url, f"SELECT version FROM {MARKER}") == [(SCHEMA_VERSION,)]
    now = wall()
    assert {i.id: i.alive for i in await upgraded.instances(now)}["old:1:a"] is True
    assert {i.id: i.alive for i in await upgraded.instances(now + 100)}["old:1:a"] is False  # its own clock


async def test_a_daemon_is_listed_from_its_start_and_after_its_stop(url: str, opened: list[PostgresState]) -> None:
    daemon = await PostgresState.open(url, "daemon")
    sender = await PostgresState.open(url, "sender")
    operator = await PostgresState.open(url, "operator")
    opened.append(operator)
    now = wall()
    listed = {i.id: i for i in await operator.instances(now)}
    assert set(listed) == {daemon.instance, sender.instance}  # before any heartbeat
    assert all(i.alive for i in listed.values())
    await daemon.heartbeat(now, {"chatbots": {"Bot A": {"failures": 0}}, "problems": []})
    await daemon.close()
    await sender.close()
    (last,) = await operator.instances(now)  # the sender, which never beat, left nothing
    assert (last.id, last.alive, last.status) == (daemon.instance, False,
                                                  {"chatbots": {"Bot A": {"failures": 0}}, "problems": []})


async def test_a_change_whose_notification_is_lost_is_seen_all_the_same(url: str, opened: list[PostgresState]) -> None:
    """Behind PgBouncer in transaction mode no notification arrives: the daemon still learns of an
    operator's change (a `state forget` its pollers' cached answers must not outlive) from the
    counter it reads once a second."""
    daemon = await PostgresState.open(url, "daemon")
    opened.append(daemon)
    before = daemon.changed_elsewhere()
    await run_sql(url, "UPDATE changes SET n = n + 1 WHERE id = 1")  # counted, never announced
    await until(lambda: daemon.changed_elsewhere() != before, timeout=5, what="the counter read")


async def test_a_frozen_network_ends_a_call_near_its_deadline(url: str, opened: list[PostgresState]) -> None:
    """The reviewer's finding: psycopg answers a cancellation by cancelling the query on the server
    and waiting up to 10 s for that, so behind a network that hangs a 1 s deadline took 11 s, and a
    daemon's stop outlived systemd's TimeoutStopSec. Now the call ends within a second or two."""
    parts = urlsplit(direct_url(url))
    proxy = FreezingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    try:
        state = await PostgresState.open(database_url(parts.path.strip("/"), port=port), "daemon")
        opened.append(state)
        state.deadline = 1.0
        assert await state.sink_counts() == {}
        proxy.freeze()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StateUnavailable, match="no answer within 1 s"):
            await state.sink_counts()
        assert loop.time() - started < 4.0  # 1 s and the double cancel, not 1 + 10 s
        waiting = asyncio.ensure_future(state.sink_counts())  # our own caller gives up (a stop)
        await asyncio.sleep(0.3)
        started = loop.time()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert loop.time() - started < 3.0
        proxy.thaw()
    finally:
        await proxy.close()


async def test_polls_finishing_together_share_a_statement_and_never_fail_each_other(
        url: str, opened: list[PostgresState]) -> None:
    """A burst's polls are written as groups (one statement each); a poll whose value the server
    refuses (a NUL character in a name) fails alone, and two polls of one chatbot never share one."""
    state = await PostgresState.open(url, "daemon")
    opened.append(state)
    now = wall()
    polls = [poll(now, [(lead(i, serial=f"bot-{i}"), ("crm", "slack"))], serial=f"bot-{i}", chatbot=f"Bot {i}",
                  batches=("slack",)) for i in range(1, 21)]
    polls.append(poll(now, [(lead(99, serial="bot-1"), ("crm",))], serial="bot-1", chatbot="Bot 1"))  # the same chatbot
    assert await asyncio.gather(*(state.record_poll(p) for p in polls)) == [2] * 20 + [1]
    assert state._groups.groups == 2  # 20 chatbots in one statement; bot-1's second poll in the next
    claimed = flat(await state.claim(now, {"crm": 100, "slack": 100}, lease=LEASE))
    assert len(claimed) == 41 and len({d.batch for d in claimed if d.sink == "slack"}) == 20  # a batch per poll
    good = poll(now, [(lead(60, serial="bot-good"), ("crm",))], serial="bot-good", chatbot="Good Bot")
    bad = poll(now, [(lead(50, serial="bot-bad"), ("crm",))], serial="bot-bad", chatbot="Bad\x00Bot")
    results = await asyncio.gather(state.record_poll(good), state.record_poll(bad), return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], StateError) and not isinstance(results[1], StateUnavailable)
    assert "bot-good" in await state.chatbots() and "bot-bad" not in await state.chatbots()


async def test_a_process_judged_by_its_pid_only_in_our_own_table_of_processes(
        url: str, opened: list[PostgresState]) -> None:
    """The second review's finding: two containers may share a hostname and not their processes;
    a live daemon whose pid is missing *here* was taken for dead and its deliveries sent twice."""
    other = await PostgresState.open(url, "daemon")
    opened.append(other)
    now = wall()
    await other.record_poll(poll(now, [(lead(1), ("crm",))]))
    assert len(flat(await other.claim(now, {"crm": 1}, lease=LEASE))) == 1
    await run_sql(url, "UPDATE instances SET pid = 2147483646, processes = 'another-container' WHERE id = %s",
                  (other.instance,))
    me = await PostgresState.open(url, "daemon")
    opened.append(me)
    assert await me.release_claims(now) == 0  # its heartbeat is fresh: alive, wherever its pid is
    await run_sql(url, "UPDATE instances SET processes = %s WHERE id = %s", (PROCESS_TABLE, other.instance))
    assert await me.release_claims(now) == 1  # in our own table, a missing pid is a dead process


async def test_a_lead_another_process_records_meanwhile_still_gets_our_deliveries(
        url: str, opened: list[PostgresState]) -> None:
    """The second review's finding: one statement sees one snapshot, so a lead another process
    committed while ours waited on its key was invisible and our deliveries for it were lost."""
    state = await PostgresState.open(url, "daemon")
    opened.append(state)
    now = wall()
    first = lead(1)
    async with await psycopg.AsyncConnection.connect(direct_url(url)) as other:
        await other.execute(
            "INSERT INTO leads (serial, session_id, created_us, chatbot, type, raw, detected_at_us, notified) "
            "VALUES (%s, %s, %s, 'Bot A', 'Lead', '{}', 0, true)",
            (first.key.serial_number, first.key.session_id, first.key.created_us))  # uncommitted: ours waits
        recording = asyncio.ensure_future(state.record_poll(poll(now, [(first, ("crm", "slack"))])))
        async def waiting_on_the_key() -> bool:
            rows = await run_sql(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND wait_event_type = 'Lock'")
            return bool(rows[0][0])

        await until(waiting_on_the_key, what="our statement waiting on the other's key")
        assert not recording.done()
        await other.commit()
    assert await recording == 2
    assert sorted(d.sink for d in flat(await state.claim(now, {"crm": 5, "slack": 5}, lease=LEASE))) == ["crm", "slack"]


async def test_a_group_is_bounded_and_a_bug_in_it_strands_no_poll(url: str, opened: list[PostgresState]) -> None:
    state = await PostgresState.open(url, "daemon")
    opened.append(state)
    now = wall()
    big = [poll(now, [(lead(i, serial=f"big-{n}"), ("crm",)) for i in range(2_000)], serial=f"big-{n}")
           for n in range(4)]  # 4,000 rows each: at most one per statement
    assert await asyncio.gather(*(state.record_poll(p) for p in big)) == [2_000] * 4
    assert state._groups.groups == 4
    groups = state._groups
    real = groups._write
    calls = 0

    async def broken_once(group: Sequence[PollRecord]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("a bug")
        return await real(group)

    groups._write = broken_once
    first, second = poll(now, [(lead(1, serial="a"), ("crm",))], serial="a"), \
        poll(now, [(lead(1, serial="b"), ("crm",))], serial="b")
    results = await asyncio.gather(state.record_poll(first), state.record_poll(second), return_exceptions=True)
    assert all(isinstance(r, TypeError) for r in results)  # failed, not waiting forever
    assert await state.record_poll(second) == 1  # the next poll is written
    await state.close()  # and closing raises nothing


# -- several instances: who polls what --------------------------------------------------------
async def test_instances_share_the_chatbots_and_take_over_those_of_one_gone(
        url: str, opened: list[PostgresState]) -> None:
    serials = [f"bot-{i}" for i in range(10)]
    first = await PostgresState.open(url, "daemon")
    opened.append(first)
    now = wall()
    assert await first.own(serials, now) == frozenset(serials)  # alone: every chatbot
    second = await PostgresState.open(url, "daemon")
    opened.append(second)
    assert await second.own(serials, now) == frozenset()  # all leased to the first, for now
    kept = await first.own(serials, now)  # a second instance is alive: half goes back
    assert kept is not None and len(kept) == 5
    taken = await second.own(serials, now)
    assert taken == frozenset(serials) - kept  # the other half, none twice
    owners = await second.owners()
    assert {owners[s] for s in kept} == {first.instance} and {owners[s] for s in taken} == {second.instance}
    await run_sql(url, "UPDATE instances SET heartbeat_us = 0, owning_us = 0 WHERE id = %s",
                  (first.instance,))  # it died: no heartbeat, no renewal, its lease lapsed
    assert await second.own(serials, now) == frozenset(serials)  # takes over what lapsed
    assert second.takeovers == 5
    await second.close()  # a clean stop hands everything over at once
    third = await PostgresState.open(url, "daemon")
    opened.append(third)
    assert await third.own(serials, now) == frozenset(serials) and third.takeovers == 0


async def test_renewing_ownership_rewrites_one_row_however_many_chatbots(
        url: str, opened: list[PostgresState]) -> None:
    """100,000 chatbots over three instances renewed every 2 s would be 50,000 row updates a
    second: the lease is the instance's, so a renewal rewrites its own row and no owner row."""
    serials = [f"bot-{i}" for i in range(300)]
    state = await PostgresState.open(url, "daemon")
    opened.append(state)
    now = wall()
    assert await state.own(serials, now) == frozenset(serials)
    before = await run_sql(url, "SELECT serial, xmin::text FROM owners ORDER BY serial")
    (instance_before,) = await run_sql(url, "SELECT xmin::text FROM instances WHERE id = %s", (state.instance,))
    assert await state.own(serials, now) == frozenset(serials)
    assert await run_sql(url, "SELECT serial, xmin::text FROM owners ORDER BY serial") == before
    assert await run_sql(url, "SELECT xmin::text FROM instances WHERE id = %s", (state.instance,)) != [instance_before]


async def test_instances_knowing_different_chatbots_leave_none_unpolled(
        url: str, opened: list[PostgresState]) -> None:
    """A rolling config change: two instances know 100 chatbots, the third those and 10 more.
    Each stopped at its own share, and 5 chatbots every instance knows were polled by nobody (the
    review's finding). Every chatbot has an owner, one that knows it, and it stays so."""
    common = [f"bot-{i:03d}" for i in range(100)]
    extras = [f"new-{i}" for i in range(10)]
    states = [await PostgresState.open(url, "daemon") for _ in range(3)]
    opened.extend(states)
    lists = [common, common, common + extras]
    now = wall()
    for _ in range(6):  # renewals, in turn, as the instances do every 2 s
        for state, serials in zip(states, lists, strict=True):
            await state.own(serials, now)
    owners = await states[0].owners()
    assert sorted(owners) == sorted(common + extras)
    assert {owners[s] for s in extras} == {states[2].instance}
    epochs = await run_sql(url, "SELECT serial, instance, epoch FROM owners ORDER BY serial")
    for _ in range(3):  # settled: nobody gives back what nobody else would take
        for state, serials in zip(states, lists, strict=True):
            await state.own(serials, now)
    assert await run_sql(url, "SELECT serial, instance, epoch FROM owners ORDER BY serial") == epochs


async def test_no_chatbot_stays_unpolled_when_one_instance_knows_a_few_or_shares_do_not_divide(
        url: str, opened: list[PostgresState]) -> None:
    """The second review's findings: shares rounded up add up to more chatbots than there are,
    so one instance looked short for ever and the one chatbot only another knew stayed free; and
    an instance knowing 10 of another's 100 was given back chatbots it did not know, which then
    stayed free. A chatbot may be free for a renewal or two while the shares settle, never longer."""
    common = [f"bot-{i:03d}" for i in range(10)]
    a, b, c = [await PostgresState.open(url, "daemon") for _ in range(3)]
    opened.extend((a, b, c))
    now = wall()
    free_before: set[str] = set()
    for _ in range(8):  # 10 over 3 does not divide, and only `a` knows new-x
        for state in (a, b, c):
            await state.own([*common, "new-x"] if state is a else common, now)
        free = {*common, "new-x"} - set(await a.owners())
        assert not free & free_before, f"free at two looks in a row: {sorted(free & free_before)}"
        free_before = free
    everything = [f"bot-{i:03d}" for i in range(100)]
    free_before = set()
    for _ in range(30):
        await b.own(everything[:10], now)
        await a.own(everything, now)
        free = set(everything) - set(await a.owners())
        assert not free & free_before, f"free at two looks in a row: {sorted(free & free_before)}"
        free_before = free


async def test_a_paced_sink_is_paced_for_every_instance(url: str, opened: list[PostgresState]) -> None:
    one, two = await PostgresState.open(url, "daemon"), await PostgresState.open(url, "daemon")
    opened += [one, two]
    assert await one.pace("slack", 30.0) == 0.0  # one may send now; the next slot is 30 s later
    wait = await two.pace("slack", 30.0)
    assert 25.0 < wait <= 30.0  # whoever asks
    assert await one.pace("slack", 30.0) > 25.0
    assert await two.pace("email", 30.0) == 0.0  # per sink
    await run_sql(url, "UPDATE paces SET next_us = 0 WHERE sink = 'slack'")  # the slot came
    assert await two.pace("slack", 30.0) == 0.0


async def test_deliveries_queued_by_one_instance_wake_the_others(url: str, opened: list[PostgresState]) -> None:
    """A LISTEN/NOTIFY hint: another instance's dispatcher looks at once instead of at its idle
    recheck (a lost hint costs that recheck, never a delivery)."""
    one, two = await PostgresState.open(direct_url(url), "daemon"), await PostgresState.open(direct_url(url), "daemon")
    opened += [one, two]
    before = two.work_elsewhere()
    await one.record_poll(poll(wall(), [], [lead(1)]))  # seen, nothing queued: no hint
    await one.record_poll(poll(wall(), [(lead(2), ("crm",))]))
    await until(lambda: two.work_elsewhere() != before, what="the hint")
