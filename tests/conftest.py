"""Real local servers for every test: the LeadList simulator and a webhook receiver that checks
signatures on its own (not with the code under test). Only loopback; every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from notifier.simulator import Simulator, start_simulator

API_KEY = "test-api-key-0123456789"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SERIAL_A = "3254a9d0424c4806b9ea3d0763ccfaaa"
SERIAL_B = "3254a9d0424c4806b9ea3d0763ccfbbb"


async def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for a condition with a bound: never sleep-and-hope. The condition may be async (a
    question to the state)."""
    deadline = time.monotonic() + timeout
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def _holds(condition: Callable[[], Any]) -> bool:
    result = condition()
    return bool(await result if inspect.isawaitable(result) else result)


def baselined(service: Any) -> bool:
    """Every chatbot's first poll has *finished*. (`status.polls` counts a poll when it starts: a
    lead added while the first poll is in flight is rightly baselined, never notified.)"""
    return bool(service.pollers) and all(p.status.last_success is not None for p in service.pollers)


def verify_signature(secret: str, headers: Any, body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec independently of notifier's signer."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig.split(",", 1)[1] == expected for sig in headers["webhook-signature"].split())


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook consumer. `responses` are served in order, then 200."""

    url: str = ""
    secret: str | None = WEBHOOK_SECRET
    received: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    responses: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    fail_every: int = 0  # answer 500 to every n-th request
    bad_signatures: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends every delay at teardown

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        item = Received(dict(request.headers), body)
        self.received.append(item)
        if self.secret and not verify_signature(self.secret, request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        status, headers, delay = self.responses.pop(0) if self.responses else (200, {}, 0.0)
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), delay)
        if self.fail_every and len(self.received) % self.fail_every == 0:
            status = 500
        if 200 <= status < 300:
            self.accepted.append(item)
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "nope")

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.accepted]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(api_keys={API_KEY})
    sim.add_chatbot(SERIAL_A)
    sim.add_chatbot(SERIAL_B)
    runner, url = await start_simulator(sim)
    yield sim, url
    await runner.cleanup()


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                path: str = "/hook") -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    runner, rec.url = await serve(rec.handle)
    yield rec
    rec.released.set()
    await runner.cleanup()


ENGINES = ("sqlite", "postgresql")


def sqlite_state(tmp_path: Path) -> str:
    """The body of a [state] table naming the SQLite file state.db in `tmp_path`."""
    return f'path = "{tmp_path / "state.db"}"'


@pytest.fixture(params=ENGINES)
async def state_toml(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The body of a [state] table, once per engine (test ids `[sqlite]`, `[postgresql]`): the
    SQLite file state.db in `tmp_path`, or `url = …` of a new PostgreSQL database of the test's
    own (dropped afterwards; skipped with the reason where no server answers, failed on CI).
    Whatever uses the database must be closed by the end of the test."""
    if request.param == "sqlite":
        yield sqlite_state(tmp_path)
        return
    from .state.pg import fresh_database
    async with fresh_database() as url:
        yield f'url = "{url}"'


def write_config(tmp_path: Path, api_url: str, hook_url: str | None = None, *, extra: str = "",
                 poll: str = "interval = 0.2", chatbots: str | None = None, sinks: str | None = None,
                 state: str | None = None) -> Path:
    """A config for the local servers. `state` is the body of its [state] table (the `state_toml`
    fixture's, to run on either engine); by default the SQLite file state.db in `tmp_path`."""
    if sinks is None:
        sinks = f'[sinks.crm]\ntype = "webhook"\nurl = "{hook_url}"\nsecret = "{WEBHOOK_SECRET}"\n'
    if chatbots is None:
        chatbots = (f'[[chatbots]]\nname = "alpha"\nserial_number = "{SERIAL_A}"\n\n'
                    f'[[chatbots]]\nname = "beta"\nserial_number = "{SERIAL_B}"\n')
    text = (f'[api]\nbase_url = "{api_url}"\napi_key = "{API_KEY}"\ntimeout = 2\nrequests_per_second = 200\n\n'
            f'[state]\n{sqlite_state(tmp_path) if state is None else state}\n\n[poll]\n{poll}\n\n'
            f'[delivery]\nbackoff_initial = 0.05\nbackoff_max = 0.2\nshutdown_grace = 2\n\n'
            f"{sinks}\n{chatbots}\n{extra}")
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def three_sinks(receiver: Receiver, slack: SlackStandIn, mailbox: Mailbox, slack_options: str = "") -> str:
    """A webhook `crm`, a Slack `slack` (token, on the stand-in) and an email `mail` (on aiosmtpd);
    `slack_options` are extra lines for the Slack sink."""
    return f"""
[sinks.crm]
type = "webhook"
url = "{receiver.url}"

[sinks.slack]
type = "slack"
token = "{slack.token}"
channel = "C42"
base_url = "{slack.base}"
{slack_options}

[sinks.mail]
type = "email"
host = "{mailbox.host}"
port = {mailbox.port}
security = "none"
from = "notifier@example.com"
to = ["sales@example.com"]
"""


@dataclass
class SlackStandIn:
    """Slack's incoming-webhook and chat.postMessage endpoints, recording what arrived.
    `responses` are (status, body, headers) served in order, then success."""

    base: str = ""
    webhook_url: str = ""
    token: str = "xoxb-test-token-abcdef"
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    responses: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)

    async def webhook(self, request: web.Request) -> web.Response:
        self.requests.append((await request.text(), dict(request.headers)))
        if self.responses:
            status, body, headers = self.responses.pop(0)
            return web.Response(status=status, text=str(body), headers=headers)
        self.messages.append(await request.json())
        return web.Response(text="ok")

    async def post_message(self, request: web.Request) -> web.Response:
        self.requests.append((await request.text(), dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.responses:
            status, body, headers = self.responses.pop(0)
            return web.json_response(body, status=status, headers=headers)
        self.messages.append(await request.json())
        return web.json_response({"ok": True, "channel": "C1", "ts": "1.2"})


async def serve_slack(stand_in: SlackStandIn) -> web.AppRunner:
    """Serves a Slack stand-in's incoming webhook and chat.postMessage on loopback; sets its URLs."""
    app = web.Application()
    app.router.add_post("/services/T000/B000/XXXX", stand_in.webhook)
    app.router.add_post("/api/chat.postMessage", stand_in.post_message)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stand_in.base = f"http://127.0.0.1:{port}/api/"
    stand_in.webhook_url = f"http://127.0.0.1:{port}/services/T000/B000/XXXX"
    return runner


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    stand_in = SlackStandIn()
    runner = await serve_slack(stand_in)
    yield stand_in
    await runner.cleanup()


@dataclass
class Mailbox:
    """An aiosmtpd handler: records envelopes, and answers with `replies` (code, text) when set."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Any] = field(default_factory=list)
    rcpt_reply: str | None = None
    data_reply: str | None = None
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(envelope)
        return "250 Message accepted"

    def parsed(self, index: int = -1) -> Any:
        import email
        import email.policy

        return email.message_from_bytes(self.messages[index].content, policy=email.policy.default)


@pytest.fixture
def mailbox() -> Any:
    import socket

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    box = Mailbox()

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        box.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"smtp-password-xyz", handled=False)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        box.port = probe.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=box.port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture
async def chat() -> AsyncIterator[Any]:
    """Stand-ins of the Teams, Discord, Telegram and Google Chat APIs: tests/chatservers.py."""
    from .chatservers import serve_chat

    async with serve_chat() as servers:
        yield servers
