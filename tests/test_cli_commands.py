"""The operator commands tell the truth (issue 13, items 7, 9, 15 and 16), run in-process against a
state file the real daemon wrote and a real webhook receiver."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from typing import Any

from notifier.types import LeadKey

from .conftest import SERIAL_A
from .test_cli_support import HEADER_TOKEN, Copy, copy_fixture, in_process_fixture, world_fixture  # noqa: F401

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
OTHER_TIMES = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d|\d\d:\d\d:\d\d[.+]|\d\d:\d\d:\d\d \(?UTC")


def webhook_id(copy: Copy, lead: dict[str, Any]) -> str:
    """The webhook-id of a lead, from its key as the state file keeps it."""
    with sqlite3.connect(copy.dir / "state.db") as db:
        serial, created_us = db.execute("SELECT serial, created_us FROM leads WHERE session_id = ?",
                                        (lead["SessionID"],)).fetchone()
    return LeadKey(serial, lead["SessionID"], created_us).webhook_id()


# -- 7: replay sends exactly what it queued ----------------------------------------------------
def test_replay_without_a_daemon_sends_only_the_replayed_lead(copy: Copy) -> None:
    """Another delivery of the same sink is due (an operator retried a dead letter); the replay of
    one lead must send that lead only, and count only it."""
    gone = copy.ids("dead")["Gus Gone"]
    assert copy.run("outbox", "retry", str(gone)).code == 0  # due now, but not this command's business
    done = copy.world.leads["Ada Done"]
    ran = copy.run("replay", "--sink", "crm", "--session", str(done["SessionID"]))
    assert ran.code == 0, ran.err
    assert copy.world.hook.ids() == [webhook_id(copy, done)]  # one request: the replayed lead, its original id
    assert "1 delivered" in ran.out and "failed" not in ran.out and "still pending" not in ran.out
    assert copy.ids()["Gus Gone"] == gone  # still waiting for the next `run` or `once`, untouched
    with sqlite3.connect(copy.dir / "state.db") as db:
        assert db.execute("SELECT attempts FROM outbox WHERE id = ?", (gone,)).fetchone() == (0,)


def test_replay_of_an_unknown_session_fails(copy: Copy) -> None:
    ran = copy.run("replay", "--sink", "crm", "--session", "424242")
    assert ran.code == 1 and "no notified lead with SessionID 424242" in ran.err
    assert copy.world.hook.requests == []


# -- 9: outbox retry says what it did not do -------------------------------------------------------
def test_retry_names_unknown_and_delivered_ids_and_fails(copy: Copy) -> None:
    gone = copy.ids("dead")["Gus Gone"]
    with sqlite3.connect(copy.dir / "state.db") as db:
        delivered = db.execute("SELECT id FROM outbox WHERE state = 'done'").fetchone()[0]
    ran = copy.run("outbox", "retry", "999999", str(delivered), str(gone))
    assert ran.code == 1
    assert "999999 not found" in ran.err and f"{delivered} already delivered" in ran.err
    assert "1 delivery is due again" in ran.out  # the retryable one was retried
    assert copy.ids()["Gus Gone"] == gone
    ran = copy.run("outbox", "retry", "999999")
    assert ran.code == 1 and "0 deliveries are due again" in ran.out and "999999 not found" in ran.err


def test_retry_with_only_a_sink_makes_its_pending_deliveries_due_now(copy: Copy) -> None:
    before = json.loads(copy.run("outbox", "list", "--json").out)["deliveries"]
    assert [row["attempts"] for row in before] == [1]  # Bea Busy: retried in ten minutes or more
    ran = copy.run("outbox", "retry", "--sink", "crm")
    assert ran.code == 0, ran.err
    assert "1 delivery is due again" in ran.out
    after = json.loads(copy.run("outbox", "list", "--json").out)["deliveries"]
    assert [row["attempts"] for row in after] == [0]
    assert after[0]["next_at"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- 15: one time format, one JSON document, plurals -------------------------------------------
def _times(value: Any) -> list[str]:
    """Every value of a key that names a time, anywhere in a JSON document."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("at", "created", "detected_at", "next_at", "updated_at", "last_poll", "last_success",
                       "status_written", "now"):
                found.append(item)
            else:
                found += _times(item)
    elif isinstance(value, list):
        for item in value:
            found += _times(item)
    return found


def test_every_output_uses_one_time_format(copy: Copy) -> None:
    session = str(copy.world.leads["Bea Busy"]["SessionID"])
    texts = {args: copy.run(*args) for args in (
        ("status",), ("outbox", "list"), ("outbox", "list", "--dead"), ("leads",), ("leads", "show", session),
        ("replay", "--sink", "crm", "--since", "2000-01-01", "--dry-run"))}
    for args, ran in texts.items():
        assert ran.code == 0, (args, ran.err)
        assert OTHER_TIMES.findall(ran.out) == [], (args, ran.out)
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ran.out), (args, ran.out)
    assert re.search(r"Z \(\d+[smhd] ago\)", texts[("status",)].out)  # status adds a relative age
    for command in (("status", "--json"), ("outbox", "list", "--json"), ("outbox", "list", "--dead", "--json"),
                    ("leads", "--json"), ("leads", "show", session, "--json")):
        document = json.loads(copy.run(*command).out)  # one document, not a list of lines or several
        assert isinstance(document, dict), command
        times = [t for t in _times(document) if t is not None]
        assert times and all(isinstance(t, str) and ISO.match(t) for t in times), (command, times)


def test_json_says_when_it_was_truncated(copy: Copy) -> None:
    full = json.loads(copy.run("leads", "--json").out)
    assert (full["count"], full["total"], full["truncated"]) == (3, 3, False)
    cut = json.loads(copy.run("leads", "--json", "--limit", "2").out)
    assert (cut["count"], cut["total"], cut["truncated"]) == (2, 3, True)
    assert "2 of 3 leads" in copy.run("leads", "--limit", "2").out
    rows = json.loads(copy.run("outbox", "list", "--dead", "--json", "--limit", "1").out)
    assert (rows["count"], rows["total"], rows["truncated"]) == (1, 1, False)


def test_counts_are_written_in_good_english(copy: Copy) -> None:
    session = str(copy.world.leads["Ada Done"]["SessionID"])
    assert copy.run("leads", "--session", session).out.splitlines()[-1] == "1 lead"
    assert copy.run("outbox", "list", "--dead").out.splitlines()[-1] == "1 dead delivery"
    ran = copy.run("outbox", "purge", "--dead")
    assert ran.out.startswith("1 dead letter purged")
    assert copy.run("replay", "--sink", "crm", "--session", session, "--dry-run").out.startswith(
        "1 notified lead matches; 1 to replay")


# -- 16: webhook-ids, test-sink's headers, once --strict -------------------------------------------
def test_leads_show_prints_each_sinks_webhook_id_and_leads_finds_one(copy: Copy) -> None:
    lead = copy.world.leads["Gus Gone"]
    wanted = LeadKey(SERIAL_A, lead["SessionID"], 0).webhook_id()  # the id of another key: not found
    expected = webhook_id(copy, lead)
    story = copy.run("leads", "show", str(lead["SessionID"])).out
    assert re.search(rf"\n +crm +dead +1 attempt +webhook-id {expected}\n", story), story
    found = copy.run("leads", "--webhook-id", expected, "--json")
    assert found.code == 0 and [d["session_id"] for d in json.loads(found.out)["leads"]] == [lead["SessionID"]]
    assert json.loads(found.out)["leads"][0]["webhook_id"] == expected
    assert copy.run("leads", "show", "--webhook-id", expected).out.startswith(f"Lead {lead['SessionID']} ")
    none = copy.run("leads", "show", "--webhook-id", wanted)
    assert none.code == 1 and "no lead with webhook-id" in none.err
    bad = copy.run("leads", "--webhook-id", "nonsense")
    assert bad.code == 2 and "is not a webhook-id" in bad.err


def test_test_sink_shows_the_webhook_headers_it_sent_with_secrets_masked(copy: Copy) -> None:
    secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg5MA=="
    copy.config.write_text(copy.config.read_text().replace('[sinks.crm]\n', f'[sinks.crm]\nsecret = "{secret}"\n'))
    ran = copy.run("test-sink", "crm")
    assert ran.code == 0, ran.err
    (headers, _), = copy.world.hook.requests
    shown = ran.out.split("Request headers sent")[1]
    assert f"webhook-id: {headers['webhook-id']}" in shown
    assert f"webhook-timestamp: {headers['webhook-timestamp']}" in shown
    assert "webhook-signature: v1,***" in shown and "X-Token: ***" in shown
    for hidden in (headers["webhook-signature"].split(",", 1)[1], HEADER_TOKEN, secret):
        assert hidden not in ran.out


def test_test_sink_prints_a_console_line_once(copy: Copy) -> None:
    ran = copy.run("test-sink", "screen")
    assert ran.code == 0, ran.err
    assert ran.out.count("Test Lead (smarterbot-notifier test-sink)") == 1


def test_once_strict_fails_when_a_delivery_failed(copy: Copy) -> None:
    copy.world.sim.add_lead("3254a9d0424c4806b9ea3d0763ccfbbb", Name="Bea Busy")  # beta: 503
    ran = copy.run("once")
    assert ran.code == 0, ran.err  # a failed delivery is retried later: not a failure of `once`
    copy.world.sim.add_lead("3254a9d0424c4806b9ea3d0763ccfbbb", Name="Bea Busy")
    ran = copy.run("once", "--strict")
    assert ran.code == 1 and "1 delivery attempt failed" in ran.err
    copy.world.sim.add_lead("3254a9d0424c4806b9ea3d0763ccfbbb", Name="Ada Done")
    assert copy.run("once", "--strict").code == 0
