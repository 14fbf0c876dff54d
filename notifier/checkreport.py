"""What `check` prints: everything the config was understood to say, as readable lines or as one
JSON document for tooling, and every problem when it says something wrong.

No secret reaches the output, not even a prefix: a secret is shown as "set". A dataclass field
declared with `repr=False` (the project's mark of a secret) is never read for its value. Names,
paths and URLs are the config's own text (a TOML string may hold any character): each line goes
through `safe_text`, the JSON through `safe_json`; the CLI scrubs the whole output as well."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .config import Config
from .exceptions import ConfigError
from .sinks.base import SinkConfig, public_url
from .text import safe_json, safe_text

SET = "set"
_URL_FIELDS = frozenset({"url", "base_url"})  # query strings and user info often carry tokens
_CONFIG_KEYS = {"sender": "from"}  # dataclass field -> the key written in the config


def report(config: Config, *, as_json: bool, state: str | None = None) -> str:
    """Everything `config` says, with its warnings: lines for a person, or one JSON document.
    `state`: what opening the state found (its schema, or why it cannot be used)."""
    data = understood(config)
    if state is not None:
        data["state"]["status"] = state
    return safe_json(data, indent=2) if as_json else _text(data)


def problems_report(error: ConfigError, *, as_json: bool) -> str:
    """A config that could not be loaded: one line per problem (`str(error)`), or one JSON document
    with every problem's key, line and message."""
    if not as_json:
        return "\n".join(safe_text(str(problem), 1000) for problem in error.problems)
    return safe_json({"ok": False, "problems": [
        {"path": p.path, "line": p.line, "key": p.key, "message": p.message} for p in error.problems]}, indent=2)


def warnings(config: Config) -> list[str]:
    """What is valid but probably not meant."""
    found = []
    rate = config.rate_warning()
    if rate:
        found.append(rate)
    routed = {sink for chatbot in config.chatbots for sink in chatbot.sinks}
    for name in config.sinks:
        if name not in routed:
            found.append(f"sink {name!r} is in no chatbot's sinks: nothing is ever delivered to it")
    return found


def understood(config: Config) -> dict[str, Any]:
    """The JSON-ready description of `config`, secrets shown as "set" or null."""
    api = config.api
    return {
        "ok": True,
        "source": config.source,
        "api": {"base_url": _url(api.base_url), "api_key": _secret(api.api_key), "timeout": api.timeout,
                "requests_per_second": api.requests_per_second, "concurrency": api.concurrency,
                "max_response_bytes": api.max_response_bytes},
        "state": ({"engine": "sqlite", "path": str(config.state_path)} if config.state_url is None else
                  {"engine": "postgresql", "url": config.state_where}) | {"ledger_days": config.ledger_days},
        "poll": dataclasses.asdict(config.poll),
        "delivery": dataclasses.asdict(config.delivery),
        "http": None if config.http is None else {"listen": _listen(config.http.host, config.http.port),
                                                  "host": config.http.host, "port": config.http.port},
        "chatbots": [{
            "name": chatbot.name, "serial_number": chatbot.serial_number, "interval": chatbot.interval,
            "lookback_days": chatbot.lookback_days, "first_run": chatbot.first_run,
            "flood_threshold": chatbot.flood_threshold,
            "api_key": "[api]" if chatbot.api_key == api.api_key else "own",
            "sinks": list(chatbot.sinks),
        } for chatbot in config.chatbots],
        "sinks": {name: _sink(sink) for name, sink in config.sinks.items()},
        "warnings": warnings(config),
    }


def _sink(sink: SinkConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"type": sink.type, "types": sorted(sink.types), "on_flood": sink.on_flood,
                           "redact": list(sink.redact), "digest_after": sink.digest_after}
    if sink.events:
        out["events"] = sorted(sink.events)
    if sink.active_hours is not None:
        out["active_hours"] = sink.active_hours.describe()
    common = {f.name for f in dataclasses.fields(SinkConfig)}
    for field in dataclasses.fields(sink):
        if field.name in common:
            continue
        value = getattr(sink, field.name)
        key = _CONFIG_KEYS.get(field.name, field.name)
        if not field.repr:  # a secret: whether it is set, never what it is
            out[key] = dict.fromkeys(value, SET) if isinstance(value, Mapping) else _secret(value)
        elif field.name in _URL_FIELDS and isinstance(value, str):
            out[key] = _url(value)
        else:
            out[key] = list(value) if isinstance(value, tuple | frozenset) else value
    return out


def _secret(value: object) -> str | None:
    return SET if value else None


def _url(url: str) -> str:
    """Scheme, host, port and path; a query or user info is marked as left out, not shown."""
    shown = public_url(url)
    try:
        parts = urlsplit(url)
        hidden = bool(parts.query or parts.username or parts.password or parts.fragment)
    except ValueError:
        hidden = True
    return f"{shown}?…" if hidden else shown


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- text -------------------------------------------------------------------------------------

def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ",".join(f"{_value(k)}:{_value(v)}" for k, v in value.items()) if value else "none"
    text = str(value)
    if not text or any(c.isspace() or c in ',"' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _pairs(data: Mapping[str, Any], limit: int = 300) -> str:
    return " ".join(f"{key}={safe_text(_value(value), limit)}" for key, value in data.items())


def _text(data: dict[str, Any]) -> str:
    lines = [f"config OK: {safe_text(str(data['source']), 300)}"]
    for section in ("api", "state", "poll", "delivery"):
        lines.append(f"  {section}: {_pairs(data[section])}")
    http = data["http"]
    lines.append(f"  http: listen={safe_text(http['listen'], 300)}" if http else "  http: off")
    for chatbot in data["chatbots"]:
        settings = {k: v for k, v in chatbot.items() if k not in ("name", "serial_number", "sinks")}
        lines.append(f"  chatbot {safe_text(chatbot['name'], 80)} ({safe_text(chatbot['serial_number'], 80)}): "
                     f"{_pairs(settings)} -> {', '.join(safe_text(s, 80) for s in chatbot['sinks'])}")
    for name, sink in data["sinks"].items():
        settings = {k: v for k, v in sink.items() if k != "type"}
        lines.append(f"  sink {safe_text(name, 80)}: {safe_text(sink['type'], 40)} {_pairs(settings)}")
    lines.extend(f"warning: {safe_text(warning, 1000)}" for warning in data["warnings"])
    return "\n".join(lines)
