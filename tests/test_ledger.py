"""The delivery ledger (`leads`, `leads show`) and `replay`, through the real command line (in
process) and a real webhook receiver: "did we get that lead, and who was told?", and "send it again"."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from notifier.config import load_config
from notifier.replay import replay
from notifier.service import Service
from notifier.simulator import Simulator

from .conftest import SERIAL_A, Receiver, baselined, until, write_config
from .test_cli_support import Ran, in_process_fixture  # noqa: F401
from .test_cli_support import run_beside as _run_beside


async def run_cli(*args: str) -> tuple[int, str, str]:
    ran: Ran = await _run_beside(*args)
    return ran.code, ran.out, ran.err


def two_sinks(receiver: Receiver, second: str = "") -> str:
    return (f'[sinks.crm]\ntype = "webhook"\nurl = "{receiver.url}"\n\n'
            '[sinks.screen]\ntype = "console"\ntypes = ["Appointment"]\n' + second)


async def test_leads_tell_who_was_told(simulator: tuple[Simulator, str], receiver: Receiver,
                                       tmp_path: Path) -> None:
    sim, url = simulator
    receiver.secret = None
    old = sim.add_lead(SERIAL_A, Name="Existing Before Start")
    path = write_config(tmp_path, url, sinks=two_sinks(receiver))
    service = Service(load_config(path), stdout=io.StringIO())
    task = asyncio.create_task(service.run(install_signals=False))
    await until(lambda: baselined(service), what="baseline")
    receiver.responses = [(503, {}, 0.0)]  # the first attempt fails, the retry lands
    new = sim.add_lead(SERIAL_A, type="Lead", Name="Ada \x1b[31mLovelace", Email="ada@example.org")
    await until(lambda: len(receiver.accepted) == 1, what="delivery after a retry")
    service.stop()
    await asyncio.wait_for(task, 10)

    code, out, err = await run_cli("leads", "--config", str(path))
    assert code == 0, err
    assert "2 leads" in out and "\x1b" not in out
    lines = out.splitlines()
    assert "crm=done(2)" in next(line for line in lines if str(new["SessionID"]) in line)
    assert "baselined" in next(line for line in lines if str(old["SessionID"]) in line)

    code, out, _ = await run_cli("leads", "--json", "--chatbot", "alpha", "--config", str(path))
    data = json.loads(out)["leads"]
    assert [d["session_id"] for d in data] == [new["SessionID"], old["SessionID"]]  # newest first
    assert data[0]["sinks"] == [{"sink": "crm", "state": "done", "attempts": 2, "last_error": None}]
    assert data[1]["notified"] is False and data[1]["sinks"] == []

    code, out, _ = await run_cli("leads", "show", str(new["SessionID"]), "--config", str(path))
    assert code == 0
    assert "Detected" in out and "Ada" in out and "\x1b" not in out
    ledger = out.split("ledger:")[1]
    assert "retry" in ledger and "503" in ledger and "delivered" in ledger and "HTTP 200" in ledger
    assert ledger.index("retry") < ledger.index("delivered")

    for args, expected in ((["--chatbot", "beta"], "0 leads"), (["--since", "2099-01-01"], "0 leads"),
                           (["--session", str(old["SessionID"])], "1 lead")):
        code, out, _ = await run_cli("leads", *args, "--config", str(path))
        assert code == 0 and expected in out
    code, _, err = await run_cli("leads", "show", "424242", "--config", str(path))
    assert code == 1 and "no lead with SessionID 424242" in err
    code, _, err = await run_cli("leads", "--since", "last tuesday", "--config", str(path))
    assert code == 2 and "not a date" in err
    code, _, err = await run_cli("leads", "--chatbot", "nobody", "--config", str(path))
    assert code == 2 and "no chatbot 'nobody'" in err


async def test_replay_without_a_daemon_sends_again_with_the_same_id(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    sim, url = simulator
    receiver.secret = None
    path = write_config(tmp_path, url, poll='first_run = "notify"', sinks=two_sinks(receiver))
    first = sim.add_lead(SERIAL_A, type="Lead")
    sim.add_lead(SERIAL_A, type="Appointment")
    assert await Service(load_config(path), stdout=io.StringIO()).once() == []
    assert len(receiver.accepted) == 2

    code, out, _ = await run_cli("replay", "--sink", "crm", "--since", "1d", "--dry-run", "--config", str(path))
    assert code == 0 and "2 to replay" in out and len(receiver.accepted) == 2  # a dry run sends nothing

    code, out, err = await run_cli("replay", "--sink", "crm", "--session", str(first["SessionID"]),
                                   "--config", str(path))
    assert code == 0, err
    assert "no daemon is running" in out and "1 delivered" in out
    assert len(receiver.accepted) == 3 and receiver.ids()[2] in receiver.ids()[:2]  # the original webhook-id
    code, out, _ = await run_cli("leads", "show", str(first["SessionID"]), "--config", str(path))
    ledger = out.split("ledger:")[1]
    assert ledger.count("delivered") == 2 and "replay" in ledger

    # a new sink catches up: only what its routing (types) would have given it
    path.write_text(path.read_text().replace('[sinks.screen]', f'[sinks.crm2]\ntype = "webhook"\n'
                                             f'url = "{receiver.url}?second"\ntypes = ["Appointment"]\n\n'
                                             '[sinks.screen]'))
    code, out, err = await run_cli("replay", "--sink", "crm2", "--since", "2000-01-01", "--config", str(path))
    assert code == 0, err
    assert "1 to replay" in out and "1 not routed to it" in out
    assert len(receiver.accepted) == 4 and receiver.accepted[3].json["type"] == "appointment.created"
    code, _, err = await run_cli("replay", "--sink", "crm", "--config", str(path))
    assert code == 2 and "one of the arguments --session --since is required" in err
    code, _, err = await run_cli("replay", "--sink", "nope", "--since", "1d", "--config", str(path))
    assert code == 2 and "no sink named 'nope'" in err


async def test_replay_beside_a_running_daemon_goes_through_it(
        simulator: tuple[Simulator, str], receiver: Receiver, tmp_path: Path) -> None:
    sim, url = simulator
    receiver.secret = None
    path = write_config(tmp_path, url, sinks=two_sinks(receiver))
    config = load_config(path)
    service = Service(config, stdout=io.StringIO())
    task = asyncio.create_task(service.run(install_signals=False))
    try:
        await until(lambda: baselined(service), what="baseline")
        lead = sim.add_lead(SERIAL_A, type="Lead")
        await until(lambda: len(receiver.accepted) == 1, what="first delivery")
        assert service.store is not None
        store = service.store  # a delivery pending in the state is not replayed: wait until it is done
        async def delivered() -> bool:
            return (await store.sink_counts())["crm"].pending == 0

        await until(delivered, what="the first delivery marked done")
        out = io.StringIO()
        assert await replay(config, out, sink="crm", session=lead["SessionID"], since=None) == 1
        assert "the running daemon" in out.getvalue()
        await until(lambda: len(receiver.accepted) == 2, what="the replay, sent by the daemon")
        assert receiver.ids()[0] == receiver.ids()[1]
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)


async def test_a_large_replay_to_people_is_one_summary(simulator: tuple[Simulator, str], receiver: Receiver,
                                                       tmp_path: Path) -> None:
    sim, url = simulator
    path = write_config(tmp_path, url, poll='first_run = "notify"\nflood_threshold = 2',
                        sinks='[sinks.screen]\ntype = "console"\n')
    for _ in range(3):
        sim.add_lead(SERIAL_A)
    assert await Service(load_config(path), stdout=io.StringIO()).once() == []
    code, out, err = await run_cli("replay", "--sink", "screen", "--since", "2000-01-01", "--config", str(path))
    assert code == 0, err
    assert "queued 3 replays as one summary message" in out
    assert out.count("# 3 new leads") == 1 and "3 delivered" in out
