"""`state migrate`, end to end: an installation on SQLite, with leads delivered, one delivery
pending (the receiver answered 503; its retry is ten minutes away), one dead (410), some held by
the flood guard and a baselined lead, is copied into an empty PostgreSQL database; after the
switch to `[state] url` nothing seen is notified again, the pending delivery goes out once with
its original webhook-id, the ledger is the one from before, and a new lead is notified. Commands
run in-process (`notifier.cli.main`) against the simulator and a real receiver in a second
thread (test_cli_support). The URL's password (which the trust server ignores) is never shown."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator

from .conftest import API_KEY, SERIAL_A, SERIAL_B, baselined, serve, until
from .state.pg import database_url, fresh_database
from .test_cli_support import ANSWERS, Background, Ran, in_process_fixture, run, simulated_api

__all__ = ["in_process_fixture"]

SECRET = "hunter2secret"  # the password in the target URL: never shown
UNSETTLED = ("pending", "dead", "held")


@dataclass
class Consumer:
    """A webhook receiver that answers by the lead's name (`answers`; anything else 200)."""

    url: str = ""
    answers: dict[str, int] = field(default_factory=lambda: dict(ANSWERS))
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        status = self.answers.get(body.get("data", {}).get("lead", {}).get("Name", ""), 200)
        return web.Response(status=status, text="ok" if status == 200 else "nope")

    def sent(self) -> list[tuple[int, str]]:
        """(SessionID, webhook-id) of every request, in order."""
        return [(body["data"]["lead"]["SessionID"], headers["webhook-id"]) for headers, body in self.requests]


def config_text(api: str, hook: str, state: str) -> str:
    """alpha's leads go to the webhook `crm` and the console `screen`, which holds a flood (more
    than two new leads in one poll); beta baselines what it finds at first."""
    return (f'[api]\nbase_url = "{api}"\napi_key = "{API_KEY}"\ntimeout = 5\nrequests_per_second = 200\n\n'
            f'[state]\n{state}\n\n[poll]\nfirst_run = "notify"\nflood_threshold = 2\n\n'
            "[delivery]\nbackoff_initial = 600\nbackoff_max = 600\nmax_attempts = 5\n\n"
            f'[sinks.crm]\ntype = "webhook"\nurl = "{hook}"\n\n'
            '[sinks.screen]\ntype = "console"\non_flood = "hold"\n\n'
            f'[[chatbots]]\nname = "alpha"\nserial_number = "{SERIAL_A}"\nsinks = ["crm", "screen"]\n\n'
            f'[[chatbots]]\nname = "beta"\nserial_number = "{SERIAL_B}"\nsinks = ["crm"]\nfirst_run = "baseline"\n')


@dataclass
class Installation:
    background: Background
    sim: Simulator
    consumer: Consumer
    api: str
    dir: Path
    sqlite: Path  # the config on the SQLite file
    leads: dict[str, dict[str, Any]]  # alpha's, by name

    def run(self, *args: str, config: Path | None = None) -> Ran:
        """A command with the SQLite config (or `config`); nothing it prints or logs holds the password."""
        ran = run(*args, "--config", str(config or self.sqlite))
        assert SECRET not in ran.out and SECRET not in ran.err, (args, ran.out, ran.err)
        return ran

    def json(self, *args: str, config: Path | None = None) -> Any:
        ran = self.run(*args, "--json", config=config)
        assert ran.code == 0, (args, ran.err)
        return json.loads(ran.out)

    def config_for(self, url: str, name: str = "postgresql.toml") -> Path:
        path = self.dir / name
        path.write_text(config_text(self.api, self.consumer.url, f'url = "{url}"'))
        return path

    def story(self, config: Path | None = None) -> dict[str, Any]:
        """Everything an operator can read of the state: the leads, each one's ledger, the outbox."""
        leads = self.json("leads", config=config)["leads"]
        return {"leads": leads,
                "ledgers": {lead["session_id"]: self.json("leads", "show", str(lead["session_id"]), config=config)
                            for lead in leads},
                "outbox": {state: self.json("outbox", "list", *([] if state == "pending" else [f"--{state}"]),
                                            config=config)["deliveries"]
                           for state in UNSETTLED}}


@pytest.fixture(name="site")
def site_fixture(tmp_path: Path) -> Iterator[Installation]:
    """Polled once on SQLite: alpha's Ada delivered, Gus dead (410), Bea pending (503), all three
    held for `screen` (a flood of three); beta's Olga baselined."""
    background = Background()
    try:
        sim, sim_runner, api = simulated_api(background)
        consumer = Consumer()
        hook_runner, consumer.url = background.run(serve(consumer.handle))
        try:
            sqlite = tmp_path / "sqlite.toml"
            sqlite.write_text(config_text(api, consumer.url, f'path = "{tmp_path / "state.db"}"'))
            leads = {name: sim.add_lead(SERIAL_A, Name=name) for name in ANSWERS}
            sim.add_lead(SERIAL_B, Name="Old Olga")
            site = Installation(background, sim, consumer, api, tmp_path, sqlite, leads)
            ran = site.run("once")
            assert ran.code == 0, ran.err
            assert sorted(body["data"]["lead"]["Name"] for _, body in consumer.requests) == sorted(ANSWERS)
            assert ran.out == ""  # screen's three are held
            yield site
        finally:
            background.run(hook_runner.cleanup())
            background.run(sim_runner.cleanup())
    finally:
        background.close()


@pytest.fixture(name="target")
async def target_fixture() -> AsyncIterator[str]:
    """An empty PostgreSQL database: its URL, with a password the trust server ignores."""
    async with fresh_database() as url:
        yield with_password(url)


def with_password(url: str) -> str:
    return database_url(urlsplit(url).path.lstrip("/"), password=SECRET, admin_url=url)


def without_password(url: str) -> str:
    return database_url(urlsplit(url).path.lstrip("/"), admin_url=url.replace(f":{SECRET}@", "@"))


def test_after_migrating_nothing_is_notified_twice_and_the_pending_delivery_goes_out_once(
        site: Installation, target: str) -> None:
    before = site.story()
    assert {state: len(rows) for state, rows in before["outbox"].items()} == {"pending": 1, "dead": 1, "held": 3}
    ledger_lines = sum(len(shown["leads"][0]["attempts"]) for shown in before["ledgers"].values())
    first = dict(site.consumer.sent())  # the webhook-id each lead got
    bea = site.leads["Bea Busy"]["SessionID"]

    ran = site.run("state", "migrate", "--to", target)
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[1:4] == ["  2 chatbots (seen keys and coverage), 4 leads",
                          "  6 deliveries: 1 pending, 3 held, 1 dead, 1 delivered",
                          f"  {ledger_lines} ledger lines"], ran.out
    assert f"{site.dir / 'state.db'} is left as it was" in ran.out

    postgresql = site.config_for(target)
    assert site.story(postgresql) == before  # the same leads, ledgers and outbox, ids and times included
    again = site.run("state", "migrate", "--to", target)  # into a database that is no longer empty
    assert again.code == 1 and "not empty" in again.err and "nothing was copied" in again.err, again.err
    assert again.out == ""
    assert site.story(postgresql) == before  # nothing changed

    site.consumer.requests.clear()
    site.consumer.answers["Bea Busy"] = 200  # the receiver is back
    (pending,) = before["outbox"]["pending"]
    assert site.run("outbox", "retry", str(pending["id"]), config=postgresql).code == 0  # due now, not in 10 min
    ran = site.run("once", config=postgresql)
    assert ran.code == 0, ran.err
    assert site.consumer.sent() == [(bea, first[bea])]  # once, with its original webhook-id; nothing else
    assert ran.out == ""  # the held ones stay held
    assert site.run("once", config=postgresql).code == 0
    assert len(site.consumer.requests) == 1  # and not again

    after = site.story(postgresql)
    for session, shown in before["ledgers"].items():  # the ledger from before the migration is still there
        old = shown["leads"][0]["attempts"]
        assert after["ledgers"][session]["leads"][0]["attempts"][:len(old)] == old
    assert [(a["sink"], a["outcome"]) for a in after["ledgers"][bea]["leads"][0]["attempts"]][-1] == (
        "crm", "delivered")
    assert {state: len(rows) for state, rows in after["outbox"].items()} == {"pending": 0, "dead": 1, "held": 3}

    new = site.sim.add_lead(SERIAL_A, Name="Nina New")  # found after the switch: notified, not baselined
    ran = site.run("once", config=postgresql)
    assert ran.code == 0, ran.err
    assert [session for session, _ in site.consumer.sent()[1:]] == [new["SessionID"]]
    assert site.consumer.sent()[1][1] not in first.values()
    assert "Nina New" in ran.out  # one new lead is no flood: screen shows it
    released = site.run("outbox", "retry", "--held", config=postgresql)
    assert released.code == 0 and released.out.startswith("3 held deliveries are due again"), released.out
    ran = site.run("once", config=postgresql)
    assert ran.code == 0 and ran.out.startswith("# 3 new leads in one poll\n"), ran.out
    assert len(site.consumer.requests) == 2
    assert site.story() == before  # the SQLite file, the way back, is as it was


def test_migrate_reads_the_url_from_a_file(site: Installation, target: str) -> None:
    secret_file = site.dir / "url.secret"
    secret_file.write_text(target + "\n")
    ran = site.run("state", "migrate", "--to-file", str(secret_file))
    assert ran.code == 0, ran.err
    assert "  6 deliveries: 1 pending, 3 held, 1 dead, 1 delivered" in ran.out.splitlines()
    postgresql = site.config_for(target)
    assert [lead["session_id"] for lead in site.json("leads", config=postgresql)["leads"]] == [
        lead["session_id"] for lead in site.json("leads")["leads"]]


def test_migrate_says_where_it_copied_to_without_the_password(site: Installation, target: str) -> None:
    ran = site.run("state", "migrate", "--to", target)
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[0] == f"copied {site.dir / 'state.db'} into {without_password(target)}:", ran.out


def test_migrate_names_a_target_without_a_password_as_it_is(site: Installation, target: str) -> None:
    """The third review's finding: the whole URL was taken for a secret, so the output said `***`."""
    plain = without_password(target)
    ran = site.run("state", "migrate", "--to", plain)
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[0] == f"copied {site.dir / 'state.db'} into {plain}:", ran.out


def test_migrate_refuses_while_a_daemon_holds_the_state(site: Installation, target: str) -> None:
    service = Service(load_config(site.sqlite))

    async def start() -> asyncio.Task[None]:
        return asyncio.create_task(service.run(install_signals=False))

    task = site.background.run(start())
    try:
        site.background.run(until(lambda: baselined(service), what="the daemon, with its lock"))
        ran = site.run("state", "migrate", "--to", target)
        assert ran.code == 1, (ran.out, ran.err)
        assert "stop the daemon before migrating; nothing was copied" in ran.err and ran.out == ""
    finally:
        site.background.loop.call_soon_threadsafe(service.stop)
        site.background.run(asyncio.wait_for(task, 10))
    postgresql = site.config_for(target)
    assert site.json("check", config=postgresql)["state"]["status"].startswith("none yet")  # nothing copied
    assert site.run("state", "migrate", "--to", target).code == 0  # the daemon is gone: now it copies
    assert re.fullmatch(r"current \(schema \d+\)", site.json("check", config=postgresql)["state"]["status"])


def test_migrate_wants_an_sqlite_state_to_copy(site: Installation) -> None:
    config = site.config_for("postgresql://postgres@127.0.0.1:5432/already_there")
    ran = site.run("state", "migrate", "--to", f"postgresql://postgres:{SECRET}@127.0.0.1:5432/other", config=config)
    assert ran.code == 2 and "[state] url already names a PostgreSQL database" in ran.err, ran.err
