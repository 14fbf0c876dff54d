"""A local stand-in for the vendor's LeadList API: behaves as the doc says, varies the way real
backends do (numbers as strings, repeated records, any number of fractional digits, -07:00/-08:00/Z
offsets, dates read in the server's own timezone), and can be told to fail. Used by `demo`,
`simulate`, the tests and the benchmark."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from .api import LEADLIST_PATH
from .types import JSONDict

_FIRST = ["Ana", "Bilal", "Chen", "Dana", "Emeka", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
_LAST = ["Silva", "Khan", "Wei", "Cohen", "Okafor", "Haddad", "Novak", "Sato", "Petrov", "Kim", "Mensah"]
_ASKS = ["Do you ship to Canada?", "I'd like a demo next week.", "What does the pro plan cost?",
         "Please call me back about a bulk order.", "Can I book a table for four on Friday?"]
_OFFSETS = [timezone(timedelta(hours=-8)), timezone(timedelta(hours=-7)), UTC]


@dataclass
class Fault:
    """One planned misbehaviour for the next matching request(s)."""

    status: int = 200
    body: bytes | None = None  # sent as-is
    envelope: JSONDict | None = None  # fields merged into the JSON answer (Success, Code, Message, Data)
    delay: float = 0.0
    truncate: bool = False  # cut the JSON answer in half
    extra_records: list[Any] = field(default_factory=list)  # appended to Data (malformed ones, say)
    serial: str | None = None  # only for this chatbot
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After


@dataclass
class Simulator:
    api_keys: set[str] = field(default_factory=lambda: {"sim-key"})
    server_tz: timezone = field(default_factory=lambda: timezone(timedelta(hours=-8)))
    end_inclusive: bool = True
    ignore_dates: bool = False  # some backends return everything whatever the dates
    vary: bool = True  # string numbers, repeats, offsets and digits vary per answer
    seed: int = 7
    chatbots: dict[str, list[JSONDict]] = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[JSONDict] = field(default_factory=list)
    keep_requests: int = 10_000
    latency: float = 0.0  # every answer takes this long (a slow backend)
    in_flight: int = 0
    max_in_flight: int = 0  # the most requests it was ever answering at once
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # its Date header and "now"

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._sessions = itertools.count(30_000)

    # -- data ---------------------------------------------------------------------------
    def add_chatbot(self, serial: str) -> None:
        self.chatbots.setdefault(serial, [])

    def add_lead(self, serial: str, *, type: str = "Lead", created: datetime | None = None,
                 session_id: int | None = None, **fields: Any) -> JSONDict:
        """Adds a record; `created` is stored as an instant and written differently per answer."""
        rng = self._rng
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        record: JSONDict = {
            "Type": type,
            "Name": f"{first} {last}",
            "Email": f"{first.lower()}.{last.lower()}@example.org",
            "PhoneNumber": f"+1 555 01{rng.randint(0, 99):02d}",
            "CreateTime": created or self.clock(),
            "Content": rng.choice(_ASKS),
            "SessionID": next(self._sessions) if session_id is None else session_id,
            "URI": "https://shop.example.org/contact",
            "Count": rng.randint(1, 9),
        }
        record.update(fields)
        self.chatbots.setdefault(serial, []).append(record)
        return record

    def fail(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    # -- the endpoint -------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post(LEADLIST_PATH, self.handle)
        return app

    def _take_fault(self, serial: str | None) -> Fault | None:
        for fault in list(self.faults):
            if fault.serial is None or fault.serial == serial:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        serial = body.get("serialNumber") if isinstance(body, dict) else None
        self.requests.append({"serial": serial, "body": body, "auth": request.headers.get("Authorization")})
        if len(self.requests) > self.keep_requests:
            del self.requests[: len(self.requests) // 2]
        fault = self._take_fault(serial)
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault and fault.body is not None:
            return web.Response(status=fault.status, body=fault.body, content_type="text/html")
        if request.headers.get("Authorization") not in self.api_keys:
            return self._envelope(None, code=401, message="Invalid secret key", success=False)
        if not isinstance(body, dict) or not isinstance(serial, str) or not serial:
            return self._envelope(None, code=400, message="serialNumber is required", success=False)
        if serial not in self.chatbots:
            return self._envelope(None, code=404, message=f"Chatbot {serial} does not exist", success=False)
        try:
            start = _date(body.get("startTime"), date.min)
            end = _date(body.get("endTime"), date.max)
        except ValueError:
            return self._envelope(None, code=400, message="startTime/endTime must be YYYY-MM-DD", success=False)
        data = [self._render(r) for r in self.chatbots[serial] if self._in_window(r, start, end)]
        if self.vary and data:
            data.extend(self._rng.sample(data, k=min(2, len(data))))  # the same record twice
        if fault:
            data.extend(fault.extra_records)
        response = self._envelope(data, overrides=fault.envelope if fault else None,
                                  status=fault.status if fault else 200)
        if fault and fault.truncate and isinstance(response.body, bytes):
            response.body = response.body[: max(1, len(response.body) // 2)]
        if fault:
            response.headers.update(fault.headers)
        return response

    def _in_window(self, record: JSONDict, start: date, end: date) -> bool:
        if self.ignore_dates:
            return True
        local: date = record["CreateTime"].astimezone(self.server_tz).date()
        return start <= local and (local <= end if self.end_inclusive else local < end)

    def _render(self, record: JSONDict) -> JSONDict:
        out = dict(record)
        created: datetime = record["CreateTime"]
        if self.vary:
            rng = self._rng
            created = created.astimezone(rng.choice(_OFFSETS))
            text = created.strftime("%Y-%m-%dT%H:%M:%S")
            digits = rng.choice(["trim", "7", "6", "trim"])
            frac = f"{created.microsecond:06d}"
            frac = frac.rstrip("0") if digits == "trim" else frac + "0" * (int(digits) - 6)
            text += f".{frac}" if frac else ""
            offset = created.strftime("%z")
            text += "Z" if offset == "+0000" and rng.random() < 0.5 else f"{offset[:3]}:{offset[3:]}"
            out["CreateTime"] = text
            if rng.random() < 0.3:
                out["SessionID"] = str(record["SessionID"])
                out["Count"] = str(record.get("Count"))
        else:
            out["CreateTime"] = created.astimezone(self.server_tz).isoformat()
        return out

    def _envelope(self, data: list[JSONDict] | None, *, code: int = 200, message: str = "",
                  success: bool = True, overrides: JSONDict | None = None, status: int = 200) -> web.Response:
        envelope: JSONDict = {"Data": data, "Version": "1.0.0", "Success": success, "Code": code,
                              "Message": message}
        envelope.update(overrides or {})
        return web.Response(status=status, body=json.dumps(envelope).encode(), content_type="application/json",
                            headers={"Date": format_datetime(self.clock(), usegmt=True)})


def _date(value: Any, default: date) -> date:
    if value in (None, ""):
        return default
    return date.fromisoformat(str(value))


async def generate_leads(sim: Simulator, serials: list[str], every: float, stop: asyncio.Event) -> None:
    """Adds a lead (now and then an appointment) to a random chatbot every `every` seconds."""
    rng = random.Random()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
            return
        except TimeoutError:
            sim.add_lead(rng.choice(serials), type=rng.choice(["Lead", "Lead", "Appointment"]))


async def start_simulator(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serves `sim` on loopback; returns the runner (to clean up) and the base URL."""
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for sock in getattr(site._server, "sockets", None) or []:
        bound = sock.getsockname()[1]
    return runner, f"http://{host}:{bound}"
