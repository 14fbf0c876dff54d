"""The whole configuration, validated at load into frozen dataclasses: after `load_config`
nothing else in the program needs to doubt a value."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .exceptions import ConfigError
from .sinks import SINK_TYPES, SinkConfig
from .state.location import password, redacted, url_problem
from .tomlsource import LineIndex, Table, suggestion

FirstRun = Literal["baseline", "notify"]
CONFIG_ENV = "SMARTERBOT_NOTIFIER_CONFIG"
HTTP_ENV = "SMARTERBOT_NOTIFIER_HTTP_LISTEN"  # default for [http] listen (the Docker image sets it)
DEFAULT_BASE_URL = "https://chat.smarterbot.ai"
_SINK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 20.0
    requests_per_second: float = 5.0
    max_response_bytes: int = 64 * 1024 * 1024
    concurrency: int = 20  # polls in flight at once; the rest wait their turn as a heap entry


@dataclass(frozen=True)
class PollConfig:
    interval: float = 60.0
    lookback_days: int = 2
    first_run: FirstRun = "baseline"
    flood_threshold: int = 50  # more new leads than this in one poll: the flood guard fires
    alert_after: float = 600.0  # polls failing this long: one `poll.failing` event


@dataclass(frozen=True)
class ChatbotConfig:
    name: str
    serial_number: str
    interval: float
    lookback_days: int
    first_run: FirstRun
    api_key: str = field(repr=False)
    sinks: tuple[str, ...]
    flood_threshold: int = 50
    alert_after: float = 600.0


@dataclass(frozen=True)
class DeliveryConfig:
    max_attempts: int = 20
    backoff_initial: float = 2.0
    backoff_max: float = 600.0
    concurrency: int = 16
    shutdown_grace: float = 10.0


SHUTDOWN_GRACE_MAX = 20.0  # seconds: + service.HARD_DEADLINE (5) stays inside systemd's TimeoutStopSec=30s


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    line: int | None = field(default=None, compare=False)  # of `listen`, for an error at start


@dataclass(frozen=True)
class Config:
    api: ApiConfig
    state_path: Path
    poll: PollConfig
    chatbots: tuple[ChatbotConfig, ...]
    sinks: Mapping[str, SinkConfig]
    delivery: DeliveryConfig
    http: HttpConfig | None = None
    ledger_days: int = 30  # how long the delivery ledger (and the leads it tells of) is kept
    source: str | None = None
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    state_url: str | None = field(default=None, repr=False)  # PostgreSQL; a secret (it holds a password)

    @property
    def state_where(self) -> str:
        """The state's location fit for output: the file, or the URL without its password."""
        return str(self.state_path) if self.state_url is None else redacted(self.state_url)

    def chatbot(self, name: str) -> ChatbotConfig | None:
        return next((c for c in self.chatbots if c.name == name or c.serial_number == name), None)

    def rate_warning(self) -> str | None:
        """When the shared [api] requests_per_second cannot keep every chatbot's interval: how far
        behind the polls fall. `check` and the daemon's start say it; nothing else would."""
        needed = sum(1.0 / chatbot.interval for chatbot in self.chatbots)
        rate = self.api.requests_per_second
        if needed <= rate * (1 + 1e-9):  # exactly enough is enough (600 / 60 s sums to 10.000000000000002)
            return None
        stretch = needed / rate
        slowest = max(chatbot.interval for chatbot in self.chatbots) * stretch
        return (f"{len(self.chatbots)} chatbots at their intervals need {needed:.3g} requests/s but "
                f"api.requests_per_second is {rate:g}: every poll comes {stretch:.3g} times later than "
                f"configured (up to every {_duration(slowest)}); raise requests_per_second or the intervals")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(explicit or env.get(CONFIG_ENV) or "config.toml")


def default_state_path(env: Mapping[str, str]) -> Path:
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state_dir) / "state.db" if state_dir else Path("state.db")


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (use --config or ${CONFIG_ENV})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, str(path), env)


def parse_config(text: str, source: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The Config a TOML text describes, or one ConfigError naming every problem in it (a problem
    in one table or one sink or chatbot never hides those in the others)."""
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"invalid TOML: {exc}", line=int(match.group(1)) if match else None,
                          path=source) from None
    root = Table(data, (), LineIndex(text), source, env)

    api = _api(root.table("api"))
    state = root.table("state")
    state_path, state_url = _state_location(state, env)
    ledger_days = state.number("ledger_days", 30, minimum=0, maximum=3650, integer=True)
    state.finish()
    poll = _poll(root.table("poll"), PollConfig())
    delivery = _delivery(root.table("delivery"))
    http = _http(root.table("http"), env.get(HTTP_ENV))
    sinks, sink_names = _sinks(root)
    chatbots = _chatbots(root, api, poll, sinks, sink_names)
    root.finish()
    root.problems.raise_if_any()
    return Config(api=api, state_path=state_path, poll=poll, chatbots=chatbots, sinks=sinks,
                  delivery=delivery, http=http, ledger_days=ledger_days, source=source, secrets=frozenset(root.secrets),
                  state_url=state_url)


def _state_location(state: Table, env: Mapping[str, str]) -> tuple[Path, str | None]:
    """`path` (an SQLite file, the default) or `url`/`url_file` (PostgreSQL), never both."""
    given = [key for key in ("path", "url", "url_file") if state.has(key)]
    if "path" in given and len(given) > 1:
        state.report(given[1], f"set either [state] path (SQLite) or [state] {given[1]} (PostgreSQL), not both")
    path = Path(state.text("path", str(default_state_path(env))))
    url = state.secret("url")
    if url is None:
        return path, None
    problem = url_problem(url)
    if problem is not None:
        state.report("url_file" if state.has("url_file") else "url", problem)
        return path, None
    if (secret := password(url)) is not None:
        state.secrets.append(secret)  # scrubbed on its own too: a driver's message may quote it
    return path, url


def _api(table: Table) -> ApiConfig:
    base_url = table.text("base_url", DEFAULT_BASE_URL).rstrip("/")
    table.check_http_url("base_url", base_url)
    config = ApiConfig(
        base_url=base_url,
        api_key=table.secret("api_key"),
        timeout=table.number("timeout", 20.0, minimum=0.1, maximum=600),
        requests_per_second=table.number("requests_per_second", 5.0, minimum=0.01, maximum=10_000),
        max_response_bytes=table.number("max_response_bytes", 64 * 1024 * 1024, minimum=1024,
                                        integer=True),
        concurrency=table.number("concurrency", 20, minimum=1, maximum=1000, integer=True),
    )
    table.finish()
    return config


def _poll(table: Table, defaults: PollConfig, *, finish: bool = True) -> PollConfig:
    config = PollConfig(
        interval=float(table.number("interval", defaults.interval, minimum=0.1, maximum=86_400)),
        lookback_days=table.number("lookback_days", defaults.lookback_days, minimum=1, maximum=366,
                                   integer=True),
        first_run=table.text("first_run", defaults.first_run, choices=("baseline", "notify")),
        flood_threshold=table.number("flood_threshold", defaults.flood_threshold, minimum=1, maximum=1_000_000,
                                     integer=True),
        alert_after=float(table.number("alert_after", defaults.alert_after, minimum=0, maximum=30 * 86_400)),
    )
    if finish:
        table.finish()
    return config


def _delivery(table: Table) -> DeliveryConfig:
    initial = float(table.number("backoff_initial", 2.0, minimum=0.01, maximum=3600))
    config = DeliveryConfig(
        max_attempts=table.number("max_attempts", 20, minimum=1, maximum=1000, integer=True),
        backoff_initial=initial,
        backoff_max=float(table.number("backoff_max", 600.0, minimum=initial, maximum=86_400)),
        concurrency=table.number("concurrency", 16, minimum=1, maximum=1000, integer=True),
        # at most SHUTDOWN_GRACE_MAX, so grace plus the hard deadline fit the unit's TimeoutStopSec=30s
        shutdown_grace=float(table.number("shutdown_grace", 10.0, minimum=0, maximum=SHUTDOWN_GRACE_MAX)),
    )
    table.finish()
    return config


def _http(table: Table, default: str | None) -> HttpConfig | None:
    listen = table.text("listen", default or None)
    table.finish()
    if listen is None:
        return None
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", listen.strip())
    if not match:
        table.report("listen", f"{listen!r} is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)")
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        table.report("listen", f"port {port} is out of range")
        return None
    return HttpConfig(host=host, port=port, line=table.index.line_of((*table.path, "listen")))


def _sinks(root: Table) -> tuple[dict[str, SinkConfig], tuple[str, ...]]:
    """The sinks that are valid, and the names of every [sinks.NAME] table (valid or not: a
    chatbot naming a broken sink is not also told the sink does not exist)."""
    sinks_table = root.table("sinks")
    if not sinks_table.data and not root.failed("sinks"):
        root.report("sinks", "at least one [sinks.NAME] section is required")
    sinks: dict[str, SinkConfig] = {}
    for name, value in sinks_table.data.items():
        table = sinks_table.table(name)
        if not isinstance(value, dict):
            continue  # reported by table()
        if not _SINK_NAME.match(name):
            table.report(None, "sink names use letters, digits, '_', '-' and '.' (at most 64)")
        kind = table.text("type", choices=SINK_TYPES)
        if kind not in SINK_TYPES:
            continue  # reported; without a type the other keys cannot be judged
        try:
            sink = SINK_TYPES[kind].parse(name, table)
        except ConfigError as exc:  # a sink that still raises: its problems join the others
            table.record(exc)
            continue
        table.finish()
        sinks[name] = sink
    return sinks, tuple(sinks_table.data)


def _chatbots(root: Table, api: ApiConfig, poll: PollConfig, sinks: Mapping[str, SinkConfig],
              sink_names: tuple[str, ...]) -> tuple[ChatbotConfig, ...]:
    raw = root.raw("chatbots")
    if raw is None or raw == []:
        root.report("chatbots", "at least one [[chatbots]] entry is required")
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        root.report("chatbots", "must be written as [[chatbots]] tables")
        return ()
    api_key_failed = root.failed("api.api_key", "api.api_key_file")
    chatbots: list[ChatbotConfig] = []
    names: set[str] = set()
    serials: set[str] = set()
    for i, item in enumerate(raw):
        table = root.child(item, ("chatbots", i))
        serial = table.text("serial_number").strip()
        name = table.text("name", serial).strip()
        twice = bool(serial) and serial in serials
        if twice:
            table.report("serial_number", f"serial_number {serial!r} is listed twice")
        if name and name in names and (table.has("name") or not twice):  # not news: a name taken from it
            table.report("name", f"chatbot name {name!r} is used twice")
        names.add(name)
        serials.add(serial)
        own = _poll(table, poll, finish=False)
        api_key = table.secret("api_key") or api.api_key
        if not api_key and not api_key_failed and not table.failed("api_key", "api_key_file"):
            table.report("api_key", "no API key: set [api] api_key (or api_key_file) or this chatbot's")
        chosen = table.text_list("sinks", tuple(sinks))
        unknown = [sink for sink in chosen if sink not in sink_names]
        if unknown:
            table.report("sinks", _unknown_sinks(unknown, sink_names))
        table.finish()
        chatbots.append(ChatbotConfig(name=name, serial_number=serial, interval=own.interval,
                                      lookback_days=own.lookback_days, first_run=own.first_run,
                                      api_key=api_key or "", sinks=chosen, flood_threshold=own.flood_threshold,
                                      alert_after=own.alert_after))
    return tuple(chatbots)


def _unknown_sinks(unknown: list[str], known: tuple[str, ...]) -> str:
    named = []
    for sink in unknown:
        close = suggestion(sink, known)
        named.append(f"{sink!r}" + (f" (did you mean {close!r}?)" if close else ""))
    return (f"unknown sink{'s' if len(unknown) > 1 else ''} {', '.join(named)} "
            f"(configured: {', '.join(sorted(known)) or 'none'})")
