from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.config import config_path, load_config, parse_config
from notifier.exceptions import ConfigError
from notifier.sinks.console import ConsoleConfig
from notifier.sinks.webhook import WebhookConfig

from .conftest import WEBHOOK_SECRET

MINIMAL = """
[api]
api_key = "k-123456"

[sinks.crm]
type = "webhook"
url = "https://crm.example.org/hook"

[[chatbots]]
name = "sales"
serial_number = "abc"
"""


def test_defaults() -> None:
    config = parse_config(MINIMAL, env={})
    assert config.api.base_url == "https://chat.smarterbot.ai"
    assert config.api.timeout == 20
    assert config.api.requests_per_second == 5
    assert config.api.concurrency == 20
    assert config.state_path == Path("state.db")
    bot = config.chatbots[0]
    assert (bot.interval, bot.lookback_days, bot.first_run, bot.sinks) == (60, 2, "baseline", ("crm",))
    sink = config.sinks["crm"]
    assert isinstance(sink, WebhookConfig)
    assert sink.types == {"Lead", "Appointment"}
    assert "k-123456" in config.secrets


def test_state_directory_from_systemd() -> None:
    config = parse_config(MINIMAL, env={"STATE_DIRECTORY": "/var/lib/smarterbot-notifier"})
    assert config.state_path == Path("/var/lib/smarterbot-notifier/state.db")


def test_overrides_and_routing() -> None:
    text = MINIMAL + """
[[chatbots]]
name = "bookings"
serial_number = "def"
interval = 30
lookback_days = 5
first_run = "notify"
api_key = "other-key"
sinks = ["console"]

[sinks.console]
type = "console"
format = "json"
types = ["Appointment"]
"""
    config = parse_config(text, env={})
    bot = config.chatbots[1]
    assert (bot.interval, bot.lookback_days, bot.first_run, bot.api_key, bot.sinks) == (
        30, 5, "notify", "other-key", ("console",))
    console = config.sinks["console"]
    assert isinstance(console, ConsoleConfig)
    assert console.types == {"Appointment"} and console.format == "json"
    assert config.chatbots[0].sinks == ("crm", "console")  # default: every sink


def test_environment_variables_and_escape() -> None:
    text = MINIMAL.replace('"k-123456"', '"${SB_KEY}"').replace("/hook", "/hook?x=$${LITERAL}")
    config = parse_config(text, env={"SB_KEY": "from-env-key"})
    assert config.api.api_key == "from-env-key"
    assert config.sinks["crm"].url.endswith("?x=${LITERAL}")  # type: ignore[attr-defined]


def test_missing_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL.replace('"k-123456"', '"${SB_MISSING}"'), "c.toml", env={})
    assert info.value.key == "api.api_key"
    assert info.value.line == 3
    assert "SB_MISSING" in str(info.value)
    assert str(info.value).startswith("c.toml:3: api.api_key:")


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("file-key-123\n")
    (tmp_path / "whsec").write_text(WEBHOOK_SECRET)
    text = MINIMAL.replace('api_key = "k-123456"', f'api_key_file = "{tmp_path / "key"}"').replace(
        'url = "https://crm.example.org/hook"',
        f'url = "https://crm.example.org/hook"\nsecret_file = "{tmp_path / "whsec"}"')
    config = parse_config(text, env={})
    assert config.api.api_key == "file-key-123"
    assert config.sinks["crm"].secret == WEBHOOK_SECRET  # type: ignore[attr-defined]
    assert {"file-key-123", WEBHOOK_SECRET} <= config.secrets


@pytest.mark.parametrize(("change", "key", "line", "words"), [
    (("[api]", "[api]\ntimout = 3"), "api.timout", 3, "not a known option"),
    (("[api]", "[api]\ntimeout = \"3\""), "api.timeout", 3, "must be a number"),
    (("[api]", "[api]\ntimeout = -1"), "api.timeout", 3, "at least"),
    (("[api]", "[api]\nconcurrency = 2.5"), "api.concurrency", 3, "whole number"),
    (('name = "sales"', 'name = "sales"\nintervall = 5'), "chatbots[0].intervall", 11, "not a known option"),
    (('name = "sales"', 'name = "sales"\nsinks = ["crn"]'), "chatbots[0].sinks", 11, "unknown sink 'crn'"),
    (('name = "sales"', 'name = "sales"\nfirst_run = "later"'), "chatbots[0].first_run", 11, "must be one of"),
    (('type = "webhook"', 'type = "webhok"'), "sinks.crm.type", 6, "must be one of"),
    (('url = "https://crm.example.org/hook"', 'url = "ftp://crm.example.org/hook"'), "sinks.crm.url", 7, "http"),
    (('url = "https://crm.example.org/hook"', 'url = "https://x.org"\nsecret = "plain"'), "sinks.crm.secret", 8,
     "whsec_"),
    (('type = "webhook"', 'type = "webhook"\ntypes = ["Lead", "Call"]'), "sinks.crm.types", 7, "'Call'"),
    (('type = "webhook"', 'type = "webhook"\nheaders = { webhook-id = "x" }'), "sinks.crm.headers", 7, "cannot be"),
    (('api_key = "k-123456"', 'api_key = "a"\napi_key_file = "/nonexistent"'), "api.api_key", 3, "not both"),
    (('api_key = "k-123456"', 'api_key_file = "/nonexistent/key"'), "api.api_key_file", 3, "cannot read"),
    (('api_key = "k-123456"', ''), "chatbots[0].api_key", 9, "no API key"),
    (("[api]", "[pol]\ninterval = 3\n[api]"), "pol", 2, "not a known option"),
    (("[api]", "[delivery]\nbackoff_initial = 10\nbackoff_max = 5\n[api]"), "delivery.backoff_max", 4, "at least"),
])
def test_every_mistake_names_its_key_and_line(change: tuple[str, str], key: str, line: int, words: str) -> None:
    text = MINIMAL.replace(*change, 1)
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml", env={})
    assert info.value.key == key, str(info.value)
    assert info.value.line == line, str(info.value)
    assert words in str(info.value)


def test_duplicate_serials_and_names() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config(MINIMAL + '\n[[chatbots]]\nname = "other"\nserial_number = "abc"\n', env={})
    with pytest.raises(ConfigError, match="used twice"):
        parse_config(MINIMAL + '\n[[chatbots]]\nname = "sales"\nserial_number = "xyz"\n', env={})


def test_no_chatbots_or_no_sinks() -> None:
    with pytest.raises(ConfigError, match=r"\[\[chatbots\]\]"):
        parse_config('[api]\napi_key = "k"\n[sinks.c]\ntype = "console"\n', env={})
    with pytest.raises(ConfigError, match="sinks"):
        parse_config('[api]\napi_key = "k"\n[[chatbots]]\nserial_number = "a"\n', env={})


def test_toml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + "\nbroken = \n", "c.toml", env={})
    assert info.value.line == 13


def test_config_path_precedence(tmp_path: Path) -> None:
    assert config_path("x.toml", {"SMARTERBOT_NOTIFIER_CONFIG": "y.toml"}) == Path("x.toml")
    assert config_path(None, {"SMARTERBOT_NOTIFIER_CONFIG": "y.toml"}) == Path("y.toml")
    assert config_path(None, {}) == Path("config.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_example_config_is_valid_and_documents_every_option() -> None:
    root = Path(__file__).parent.parent
    text = (root / "config.example.toml").read_text()
    config = parse_config(text, "config.example.toml", env={
        "SMARTERBOT_API_KEY": "k" * 8, "CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X", "SMTP_PASSWORD": "pw-123456"})
    assert config.chatbots
    assert {s.type for s in config.sinks.values()} == {"webhook", "slack", "email", "console"}
    # every option the code reads appears in the example, commented or not
    import re

    for module in ("config", "sinks/webhook", "sinks/slack", "sinks/email", "sinks/console", "sinks/base"):
        source = (root / "notifier" / f"{module}.py").read_text()
        for key in re.findall(r'\.(?:text|number|flag|text_list|text_map|secret|table|raw)\("([a-z_]+)"', source):
            if key not in ("sinks", "chatbots"):
                assert re.search(rf"\b{key}\b", text), f"config.example.toml does not mention {key}"


toml_scalars = st.none() | st.booleans() | st.integers(-5, 100_000) | st.floats(-5, 1e6, allow_nan=False) | st.text(
    max_size=12) | st.sampled_from(["webhook", "console", "baseline", "notify", "https://x.org/h", "Lead", "json"])
keys = st.sampled_from(["api", "poll", "state", "sinks", "chatbots", "type", "url", "interval", "api_key", "name",
                        "serial_number", "types", "format", "timeout", "first_run", "secret", "x", "delivery"])
documents = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    keys, inner, max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None)  # a loaded CI machine is not a failure
@given(st.dictionaries(keys, documents, max_size=6))
def test_any_document_gives_config_or_config_error(document: dict[str, object]) -> None:
    import tomllib

    text = _to_toml(document)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    try:
        config = parse_config(text, env={})
    except ConfigError as exc:
        assert str(exc)
        # every problem (issue 13: all of them, in one error) names its key, and its line when
        # the document shows the key; one line each, sorted by line
        assert len(str(exc).split("\n")) == len(exc.problems)
        assert (exc.key, exc.line) == (exc.problems[0].key, exc.problems[0].line)
        lines = [p.line for p in exc.problems if p.line is not None]
        assert lines == sorted(lines)
        for problem in exc.problems:
            assert problem.key, str(exc)
            if problem.key.split(".")[0].split("[")[0] in document:
                assert problem.line is not None, str(exc)
        return
    from notifier.checkreport import report

    assert json.loads(report(config, as_json=True))["ok"] is True
    assert report(config, as_json=False).startswith("config OK")


def _to_toml(document: dict[str, object]) -> str:
    """A crude inline-table writer: enough to feed odd shapes to the loader."""
    def value(v: object) -> str:
        if v is None:
            return '""'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode() + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        assert isinstance(v, dict)
        return "{" + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + "}"
    return "\n".join(f'"{k}" = {value(v)}' for k, v in document.items())


# -- secret files: small, regular, UTF-8 (issue 12 item 15) -----------------------------------

_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # the old reader ran to MemoryError
from notifier.config import parse_config
from notifier.exceptions import ConfigError
try:
    parse_config(sys.argv[1], "config.toml", env={})
except ConfigError as exc:
    print(exc.key, exc.line, exc, sep="|")
    sys.exit(2)
print("accepted")
"""


def _with_key_file(path: Path | str) -> str:
    return MINIMAL.replace('api_key = "k-123456"', f'api_key_file = "{path}"')


def _parse_in_child(path: Path | str) -> tuple[int, str]:
    """parse_config in a child process with a memory cap and a time bound: a reader that runs
    until MemoryError, or blocks on a FIFO forever, fails this test instead of hanging the suite."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, _with_key_file(path)], capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"reading {path} as a secret file did not finish within 60 s") from None
    return done.returncode, done.stdout.strip() or done.stderr.strip()[-300:]


def test_secret_file_dev_zero_is_refused_not_read_forever() -> None:
    code, out = _parse_in_child("/dev/zero")
    assert code == 2, out
    assert out.startswith("api.api_key_file|3|") and "not a regular file" in out


def test_secret_file_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)  # nobody ever writes: opening it for reading the ordinary way blocks forever
    code, out = _parse_in_child(fifo)
    assert code == 2, out
    assert out.startswith("api.api_key_file|3|") and "not a regular file" in out


@pytest.mark.parametrize(("content", "words"), [
    (None, "not a regular file"),  # a directory
    (b"k" * (64 * 1024 + 1), "larger than 64 KiB"),
    (b"\xff\xfekey\n", "not UTF-8"),
    (b"\n\n", "is empty"),
])
def test_secret_file_mistakes_name_key_and_line(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "key"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        parse_config(_with_key_file(path), "config.toml", env={})
    assert (info.value.key, info.value.line) == ("api.api_key_file", 3), str(info.value)
    assert words in str(info.value)
    assert str(info.value).startswith("config.toml:3: api.api_key_file:")


def test_secret_file_up_to_the_bound_with_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("file-key-" + "x" * (64 * 1024 - 10) + "\n")  # exactly 64 KiB with its newline
    assert path.stat().st_size == 64 * 1024
    config = parse_config(_with_key_file(path), env={})
    assert config.api.api_key == "file-key-" + "x" * (64 * 1024 - 10)
    (tmp_path / "short").write_text("key-\u00e9\u00e8-123\n")
    assert parse_config(_with_key_file(tmp_path / "short"), env={}).api.api_key == "key-\u00e9\u00e8-123"


def test_a_rate_that_cannot_keep_the_intervals_is_named_with_its_numbers() -> None:
    """Issue 12.16: 100,000 chatbots at 60 s with 5 requests/s were polled every ~5.6 h, silently."""
    bots = "".join(f'[[chatbots]]\nname = "b{i}"\nserial_number = "s{i}"\n' for i in range(600))
    text = f'[api]\napi_key = "k"\n\n[poll]\ninterval = 60\n\n[sinks.c]\ntype = "console"\n\n{bots}'
    warning = parse_config(text).rate_warning()
    assert warning is not None
    assert "600 chatbots" in warning and "need 10 requests/s" in warning and "requests_per_second is 5" in warning
    assert "2 times later" in warning and "every 2 min" in warning
    fast = text.replace('api_key = "k"', 'api_key = "k"\nrequests_per_second = 10')
    assert parse_config(fast).rate_warning() is None


def test_state_is_a_file_or_a_database_never_both() -> None:
    base = '[api]\napi_key = "k"\n[[chatbots]]\nname = "a"\nserial_number = "s"\n[sinks.c]\ntype = "console"\n'
    with pytest.raises(ConfigError) as both:
        parse_config(base + '[state]\npath = "s.db"\nurl = "postgresql://u:pw12345678@h:5432/d"\n', "c.toml", env={})
    assert "state.url" in str(both.value) and "path" in str(both.value) and "pw12345678" not in str(both.value)
    config = parse_config(base + '[state]\nurl = "${URL}"\n', "c.toml",
                          env={"URL": "postgresql://u:pw12345678@h:5432/d"})
    assert config.state_url is not None and config.state_where == "postgresql://u@h:5432/d"
    assert "pw12345678" in config.secrets and "pw12345678" not in repr(config)


@pytest.mark.parametrize(("url", "message"), [
    # libpq would split it at the first @, Python at the last
    ("postgresql://postgres:hunter@2SECRET@127.0.0.1:5432/postgres", "percent-encode it"),
    ("mysql://u:p@h/d", "must be a postgresql:// URL"),
    ("postgresql://u:p@h:5432/", "names no database"),
    ("postgresql://u:p@h:99999/d", "is not a valid URL"),
])
def test_a_state_url_that_cannot_be_used_is_refused_without_repeating_it(url: str, message: str) -> None:
    base = '[api]\napi_key = "k"\n[[chatbots]]\nname = "a"\nserial_number = "s"\n[sinks.c]\ntype = "console"\n'
    with pytest.raises(ConfigError) as refused:
        parse_config(base + '[state]\nurl = "${URL}"\n', "c.toml", env={"URL": url})
    assert message in str(refused.value) and "state.url" in str(refused.value)
    assert "SECRET" not in str(refused.value) and "hunter" not in str(refused.value)
