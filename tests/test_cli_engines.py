"""Every operator command works on PostgreSQL as on SQLite: each test runs once per engine
(`[sqlite]`, `[postgresql]`), in-process through the command line (`notifier.cli.main`), on a
state the real `once` wrote against the LeadList simulator and a real webhook receiver (in a
second thread: test_cli_support). The PostgreSQL URL carries a password the (trust) server
ignores: it must appear in no output and no log line of any command."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from notifier.config import load_config
from notifier.simulator import Simulator
from notifier.state import LeadQuery, LeadRecord, open_state

from .conftest import SERIAL_A, SERIAL_B, serve, write_config
from .state.pg import database_url
from .test_cli_support import ANSWERS, Background, Hook, Ran, config_text, in_process_fixture, run, simulated_api

__all__ = ["in_process_fixture"]

SECRET = "hunter2secret"  # the password in the PostgreSQL URL: never shown


@dataclass
class Site:
    """One test's world: the servers (in a background thread), its config and what `once` sent."""

    background: Background
    sim: Simulator
    hook: Hook
    config: Path
    where: str  # what `check` should show of the state: its path, or its URL without the password
    leads: dict[str, dict[str, Any]]  # alpha's leads by name (ANSWERS: delivered, dead, pending)
    sent: dict[str, str] = field(default_factory=dict)  # the webhook-id each got from the first `once`

    def run(self, *args: str) -> Ran:
        """The command with this site's config; nothing it prints (or logs) holds the password."""
        ran = run(*args, "--config", str(self.config))
        assert SECRET not in ran.out and SECRET not in ran.err, (args, ran.out, ran.err)
        return ran

    def json(self, *args: str) -> Any:
        ran = self.run(*args, "--json")
        assert ran.code == 0, (args, ran.err)
        return json.loads(ran.out)

    def session(self, name: str) -> str:
        return str(self.leads[name]["SessionID"])

    def ids(self) -> list[str]:
        return self.hook.ids()

    def coverage(self, serial: str) -> int | None:
        """A chatbot's coverage, asked through the state interface as an operator command asks."""
        async def ask() -> int | None:
            store = await open_state(load_config(self.config), "operator")
            try:
                return await store.coverage(serial)
            finally:
                await store.close()
        return asyncio.run(ask())


def with_password(state_toml: str) -> tuple[str, str]:
    """The [state] body with a password in the URL (for PostgreSQL), and what may be shown of it."""
    if not state_toml.startswith("url"):
        return state_toml, state_toml.split('"')[1]
    url = state_toml.split('"')[1]
    name = urlsplit(url).path.lstrip("/")
    return f'url = "{database_url(name, password=SECRET, admin_url=url)}"', database_url(name, admin_url=url)


@pytest.fixture(name="site")
def site_fixture(state_toml: str, tmp_path: Path) -> Iterator[Site]:
    """alpha's three leads polled by `once` (one delivered, one dead: 410, one pending: 503, due
    again in ten minutes); beta's one lead existed before beta was watched (baselined)."""
    body, where = with_password(state_toml)
    background = Background()
    try:
        sim, sim_runner, api = simulated_api(background)
        hook = Hook()
        hook_runner, hook.url = background.run(serve(hook.handle))
        try:
            config = tmp_path / "config.toml"
            config.write_text(config_text(api, hook.url, Path("STATE"), extra='first_run = "baseline"\n')
                              .replace('path = "STATE"', body))
            leads = {name: sim.add_lead(SERIAL_A, Name=name, Email=f"{name.split()[0].lower()}@example.org")
                     for name in ANSWERS}
            sim.add_lead(SERIAL_B, Name="Old Olga")
            site = Site(background, sim, hook, config, where, leads)
            ran = site.run("once", "--log-level", "debug")
            assert ran.code == 0, ran.err
            assert "delivered" in ran.err  # the log was captured: the password check above saw it
            site.sent = {body["data"]["lead"]["Name"]: headers["webhook-id"] for headers, body in hook.requests}
            assert sorted(site.sent) == sorted(ANSWERS)
            hook.requests.clear()
            yield site
        finally:
            background.run(hook_runner.cleanup())
            background.run(sim_runner.cleanup())
    finally:
        background.close()


def test_status_outbox_list_and_leads_tell_what_once_did(site: Site) -> None:
    status = site.run("status")
    assert status.code == 0, status.err
    assert re.search(r"^alpha +\S+ \(\d+s ago\) +3 +ok$", status.out, re.M), status.out
    assert re.search(r"^beta +\S+ \(\d+s ago\) +0 +ok$", status.out, re.M), status.out
    assert re.search(r"^crm +1 +0 +1$", status.out, re.M), status.out  # pending, held, dead
    data = site.json("status")
    assert data["daemon"]["running"] is False and data["daemon"]["status_written"] is not None
    assert [(c["name"], c["new_today"], c["result"]) for c in data["chatbots"]] == [("alpha", 3, "ok"),
                                                                                  ("beta", 0, "ok")]
    assert {s["name"]: (s["pending"], s["held"], s["dead"]) for s in data["sinks"]} == {"crm": (1, 0, 1),
                                                                                        "screen": (0, 0, 0)}

    pending = site.run("outbox", "list")
    assert pending.code == 0 and pending.out.splitlines()[-1] == "1 pending delivery"
    assert re.search(rf"^\d+ +crm +1 +\S+ +alpha +Lead +{site.session('Bea Busy')} +.*answered 503", pending.out, re.M)
    dead = site.run("outbox", "list", "--dead")
    assert dead.code == 0 and dead.out.splitlines()[-1] == "1 dead delivery"
    assert re.search(rf"^\d+ +crm +1 +\S+ +alpha +Lead +{site.session('Gus Gone')} +permanent: .*answered 410",
                     dead.out, re.M)
    rows = site.json("outbox", "list", "--dead")["deliveries"]
    assert [(r["session_id"], r["state"], r["webhook_id"]) for r in rows] == [
        (int(site.session("Gus Gone")), "dead", site.sent["Gus Gone"])]

    listed = site.run("leads")
    assert listed.code == 0 and listed.out.splitlines()[-1] == "4 leads"
    states = {lead["session_id"]: [(s["sink"], s["state"]) for s in lead["sinks"]]
              for lead in site.json("leads")["leads"]}
    assert {session: states[int(site.session(name))] for name, session in
            (("Ada Done", "done"), ("Gus Gone", "dead"), ("Bea Busy", "pending"))} == {
        "done": [("crm", "done")], "dead": [("crm", "dead")], "pending": [("crm", "pending")]}
    old = next(lead for lead in site.json("leads")["leads"] if lead["record"]["Name"] == "Old Olga")
    assert old["notified"] is False and old["sinks"] == []

    story = site.run("leads", "show", site.session("Gus Gone"))
    assert story.code == 0, story.err
    assert story.out.startswith(f"Lead {site.session('Gus Gone')} from chatbot alpha ({SERIAL_A})\n")
    assert re.search(rf"\n +crm +dead +1 attempt +webhook-id {site.sent['Gus Gone']}\n", story.out), story.out
    assert re.search(r"\n  ledger:\n +WHEN \(UTC\) +SINK +ATTEMPT +OUTCOME +STATUS +DETAIL\n"
                     r" +\S+Z +crm +1 +dead +410 +permanent: .*answered 410", story.out), story.out
    shown = site.json("leads", "show", site.session("Bea Busy"))["leads"]
    assert [(a["sink"], a["outcome"], a["status"]) for a in shown[0]["attempts"]] == [("crm", "retry", "503")]


def test_outbox_retry_then_purge_of_a_dead_letter(site: Site) -> None:
    (row,) = site.json("outbox", "list", "--dead")["deliveries"]
    retried = site.run("outbox", "retry", str(row["id"]))
    assert retried.code == 0, retried.err
    assert retried.out.startswith("1 delivery is due again (no daemon is running: the next `run` or `once`")
    assert site.json("outbox", "list", "--dead")["count"] == 0
    pending = {r["id"]: r["attempts"] for r in site.json("outbox", "list")["deliveries"]}
    assert pending[row["id"]] == 0 and len(pending) == 2  # with Bea's, which waits for its retry

    assert site.run("once").code == 0  # sends the retried one (410 again: dead again), not Bea's
    assert site.ids() == [site.sent["Gus Gone"]]
    (again,) = site.json("outbox", "list", "--dead")["deliveries"]
    assert (again["id"], again["attempts"]) == (row["id"], 1)

    purged = site.run("outbox", "purge", "--dead")
    assert purged.code == 0 and purged.out.startswith("1 dead letter purged"), purged.out
    assert site.json("outbox", "list", "--dead")["count"] == 0
    assert re.search(r"^crm +1 +0 +0$", site.run("status").out, re.M)
    story = site.json("leads", "show", site.session("Gus Gone"))["leads"][0]  # the ledger stays
    assert [a["outcome"] for a in story["attempts"] if a["sink"] == "crm"].count("dead") == 2
    missing = site.run("outbox", "retry", str(row["id"]))
    assert missing.code == 1 and f"{row['id']} not found" in missing.err


def test_replay_without_a_daemon_sends_it_itself_with_the_original_webhook_id(site: Site) -> None:
    ran = site.run("replay", "--sink", "crm", "--session", site.session("Ada Done"))
    assert ran.code == 0, ran.err
    assert "1 delivered" in ran.out and "running daemon" not in ran.out, ran.out
    assert site.ids() == [site.sent["Ada Done"]]  # one request: the replayed lead, its original id
    story = site.json("leads", "show", site.session("Ada Done"))["leads"][0]
    assert [(s["sink"], s["state"]) for s in story["sinks"]] == [("crm", "done")]
    assert [a["outcome"] for a in story["attempts"]].count("delivered") == 2
    assert site.json("outbox", "list")["count"] == 1  # Bea's, untouched


def test_state_forget_makes_the_next_poll_a_first_run_and_notifies_nothing_twice(site: Site) -> None:
    assert site.coverage(SERIAL_B) is not None
    ran = site.run("state", "forget", "beta", "--yes")
    assert ran.code == 0, ran.err
    assert ran.out.startswith("forgot 1 seen lead of 'beta'; its next poll is a first run again"), ran.out
    assert site.coverage(SERIAL_B) is None
    kept = site.run("state", "forget", "alpha", "--yes")  # every lead of alpha has a ledger: all stay
    assert kept.code == 0 and kept.out.startswith("forgot 0 seen leads of 'alpha'"), kept.out

    assert site.run("once").code == 0
    assert site.ids() == []  # beta's old lead is baselined again, alpha's are known: nothing twice
    assert site.coverage(SERIAL_B) is not None
    new = site.sim.add_lead(SERIAL_B, Name="Ada Done")
    assert site.run("once").code == 0
    assert [body["data"]["lead"]["SessionID"] for _, body in site.hook.requests] == [new["SessionID"]]


def test_check_says_the_schema_is_current_and_test_sink_sends(site: Site) -> None:
    ran = site.run("check")
    assert ran.code == 0, ran.err
    assert re.search(r'^  state: .* status="current \(schema \d+\)"$', ran.out, re.M), ran.out
    data = site.json("check")
    assert data["ok"] is True and re.fullmatch(r"current \(schema \d+\)", data["state"]["status"])
    sample = site.run("test-sink", "crm")
    assert sample.code == 0, sample.err
    assert len(site.hook.requests) == 1 and "Test Lead" in json.dumps(site.hook.requests[0][1])


def test_check_shows_where_the_state_is_without_the_password(site: Site, state_toml: str) -> None:
    engine, key = ("sqlite", "path") if state_toml.startswith("path") else ("postgresql", "url")
    ran = site.run("check")
    assert ran.code == 0, ran.err
    assert f"  state: engine={engine} {key}={site.where} ledger_days=30 " in ran.out, ran.out
    state = site.json("check")["state"]
    assert (state["engine"], state[key]) == (engine, site.where)


def test_a_config_with_both_path_and_url_is_a_config_error_naming_both(tmp_path: Path) -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/nowhere"
    config = write_config(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2/hook",
                          state=f'path = "{tmp_path / "state.db"}"\nurl = "{url}"')
    ran = run("check", "--config", str(config))
    assert ran.code == 2
    assert "state.url" in ran.err and "[state] path" in ran.err and "[state] url" in ran.err, ran.err
    data = json.loads(run("check", "--json", "--config", str(config)).out)
    assert data["ok"] is False and [p["key"] for p in data["problems"]] == ["state.url"]
    assert "[state] path" in data["problems"][0]["message"], data
    for command in (("check",), ("status",), ("once",)):
        ran = run(*command, "--config", str(config))
        assert ran.code == 2 and SECRET not in ran.out + ran.err, (command, ran.err)


OUTCOMES = {0: (200, "done", "delivered"), 1: (410, "dead", "dead"), 2: (503, "pending", "retry")}


def test_a_busy_once_records_every_outcome_once_with_its_ledger_line(state_toml: str, tmp_path: Path) -> None:
    """Thirty deliveries whose answers come a couple of milliseconds apart, so that outcomes
    arrive while earlier ones are being written: each is recorded (done, dead, or pending for its
    retry; one attempt) with exactly one ledger line, and none stays claimed."""
    background = Background()
    try:
        sim, sim_runner, api = simulated_api(background)

        async def answer(request: web.Request) -> web.Response:
            number = int((await request.json())["data"]["lead"]["Name"].split()[-1])
            await asyncio.sleep(number * 0.002)  # the receiver's own pace: the answers end staggered
            return web.Response(status=OUTCOMES[number % 3][0])

        hook_runner, hook = background.run(serve(answer))
        try:
            config = tmp_path / "config.toml"
            config.write_text(config_text(api, hook, Path("STATE")).replace('path = "STATE"', state_toml))
            for number in range(30):
                sim.add_lead(SERIAL_A, Name=f"Lead {number}")
            ran = run("once", "--config", str(config))
            assert ran.code == 0, ran.err
        finally:
            background.run(hook_runner.cleanup())
            background.run(sim_runner.cleanup())
    finally:
        background.close()

    async def read() -> list[LeadRecord]:
        store = await open_state(load_config(config), "operator")
        try:
            return await store.find_leads(LeadQuery(), with_attempts=True)
        finally:
            await store.close()

    found: dict[int, tuple[list[tuple[str, str, int]], list[tuple[str, int, str]]]] = {}
    for lead in asyncio.run(read()):
        number = int(lead.raw["Name"].split()[-1])
        found[number] = ([(s.sink, s.state, s.attempts) for s in lead.sinks],
                         [(a.sink, a.attempt, a.outcome) for a in lead.attempts])
    assert found == {number: ([("crm", OUTCOMES[number % 3][1], 1)], [("crm", 1, OUTCOMES[number % 3][2])])
                     for number in range(30)}
