"""Operator commands print text from strangers (leads, the vendor, receivers) and from the config:
none of it may reach the terminal as a control sequence (issue 12 item 13), in text or --json.
Each command runs in-process (`notifier.cli.main`, in a worker thread beside the servers' event
loop) on a real state file the real daemon wrote."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from notifier.config import load_config
from notifier.service import Service
from notifier.simulator import Simulator, start_simulator
from notifier.state.sqlite import status_path

from .conftest import API_KEY, SERIAL_A, serve
from .test_cli_support import kept_process_state, run

# CSI as one C1 character, NEL, RLO, LRI … PDI, LINE SEPARATOR, ALM, ZWSP, ESC, DEL, BOM
HOSTILE = "Eve\u009b31m\u0085Mal\u202elory\u2066x\u2069\u2028\u061c\u200b\x1b[2J\x7f\ufeff"
BOT_NAME = "alpha\x1b[31m\u202eahpla"  # a chatbot name in the config, with ESC and RLO
BOT_TOML = "alpha\\u001b[31m\\u202eahpla"
HEADER_TOKEN = "hdr-token-7Rq9Zs2Kx5WmPb"
# everything a terminal would act on; \n (and the table's spaces) are the commands' own
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e"
                    "\u2060-\u2064\u2066-\u2069\ufeff]")


@dataclass
class State:
    config: Path
    session: int
    out: dict[str, str]


def leaks(text: str, secret: str) -> list[str]:
    """Every prefix of `secret` of 8 or more characters that appears in `text`."""
    return [secret[:n] for n in range(8, len(secret) + 1) if secret[:n] in text]


async def run_cli(*args: str) -> tuple[int, str, str]:
    with kept_process_state():  # a fresh secrets registry, as in a new process
        ran = await asyncio.to_thread(run, *args)
    return ran.code, ran.out, ran.err


COMMANDS = {
    "check": ("check",),
    "status": ("status",),
    "status --json": ("status", "--json"),
    "outbox list": ("outbox", "list", "--dead"),
    "outbox list --json": ("outbox", "list", "--dead", "--json"),
    "leads": ("leads",),
    "leads --json": ("leads", "--json"),
    "leads show": ("leads", "show", "{session}"),
    "leads show --json": ("leads", "show", "{session}", "--json"),
    "test-sink": ("test-sink", "crm"),
}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    """Built once for the module: the commands only read."""
    return asyncio.run(build_state(tmp_path_factory.mktemp("cli")))


async def build_state(tmp_path: Path) -> State:
    """The daemon polls a lead whose every field is hostile and fails to deliver it to a receiver
    that echoes our auth header in its 401 (it ends dead); then every operator command runs."""
    sim = Simulator(api_keys={API_KEY})
    sim.add_chatbot(SERIAL_A)
    sim_runner, url = await start_simulator(sim)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=401, text=f"unauthorized: X-Token {request.headers.get('X-Token')}")

    hook_runner, hook = await serve(echo)
    try:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[api]\nbase_url = "{url}"\napi_key = "{API_KEY}"\nrequests_per_second = 200\n\n'
            f'[state]\npath = "{tmp_path / "state.db"}"\n\n[poll]\nfirst_run = "notify"\n\n'
            f'[sinks.crm]\ntype = "webhook"\nurl = "{hook}"\nheaders = {{ X-Token = "{HEADER_TOKEN}" }}\n\n'
            f'[[chatbots]]\nname = "{BOT_TOML}"\nserial_number = "{SERIAL_A}"\n')
        record = sim.add_lead(SERIAL_A, Name=HOSTILE, Content=HOSTILE, URI=f"https://x.org/{HOSTILE}")
        assert await Service(load_config(config)).once() == []
        # A state and status file written before the write side scrubbed (or by a receiver that
        # echoes the token in a way it did not recognize): the read side must hold on its own.
        db = sqlite3.connect(tmp_path / "state.db")
        with db:
            db.execute("UPDATE attempts SET detail = coalesce(detail, '') || ' X-Token ' || ?", (HEADER_TOKEN,))
            db.execute("UPDATE outbox SET last_error = coalesce(last_error, '') || ' X-Token ' || ?",
                       (HEADER_TOKEN,))
        db.close()
        status_file = status_path(tmp_path / "state.db")
        live = json.loads(status_file.read_text())
        live["status"]["chatbots"][BOT_NAME].update(failures=1, last_error=f"Code 401: Invalid key {API_KEY}\x1b[2J")
        status_file.write_text(json.dumps(live))
        out: dict[str, str] = {}
        for name, args in COMMANDS.items():
            argv = [a.format(session=record["SessionID"]) for a in args]
            code, stdout, stderr = await run_cli(*argv, "--config", str(config), "--log-format", "json")
            assert code == (1 if name == "test-sink" else 0), (name, stderr)
            out[name] = stdout
            out[name + " (stderr)"] = stderr
        return State(config, int(record["SessionID"]), out)
    finally:
        await hook_runner.cleanup()
        await sim_runner.cleanup()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_terminal_control_reaches_the_terminal(state: State, command: str) -> None:
    output = state.out[command]
    assert output.strip()
    assert UNSAFE.findall(output) == [], (command, output[:2000])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_secret_in_command_output(state: State, command: str) -> None:
    for stream in (command, command + " (stderr)"):
        for secret in (API_KEY, HEADER_TOKEN):
            assert leaks(state.out[stream], secret) == [], (stream, state.out[stream][:2000])


def test_the_state_really_held_what_was_scrubbed(state: State) -> None:
    """The commands had something to hide and something to show."""
    assert "X-Token" in state.out["leads show"] and "X-Token" in state.out["outbox list --json"]
    assert "Invalid key" in state.out["status --json"]
    assert "FAILED (permanent)" in state.out["test-sink"] and "answered 401" in state.out["test-sink"]


@pytest.mark.parametrize("command", ["leads --json", "leads show --json"])
def test_json_output_escapes_yet_keeps_every_character(state: State, command: str) -> None:
    leads = json.loads(state.out[command])["leads"]
    assert leads[0]["record"]["Name"] == HOSTILE  # lossless: the escapes decode to the lead's own text
    assert leads[0]["chatbot"] == BOT_NAME
    assert "\\u009b" in state.out[command] and "\\u202e" in state.out[command]


def test_status_json_names_round_trip(state: State) -> None:
    data = json.loads(state.out["status --json"])
    assert [c["name"] for c in data["chatbots"]] == [BOT_NAME]
    assert data["chatbots"][0]["result"].startswith("last poll failed: Code 401: Invalid key ***")
