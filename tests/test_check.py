"""Issue 13 item 13: one `check` names every problem of a config, each with its key and line, and
says everything it understood (text and JSON) without a secret or a terminal control in it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from notifier.config import parse_config
from notifier.exceptions import ConfigError

EXAMPLE = (Path(__file__).parent.parent / "config.example.toml").read_text()
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"check-SECRET-0123456789").decode()
ENV = {"SMARTERBOT_API_KEY": "sk-check-SECRET-apikey", "CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
       "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/checkSECRETslack",
       "SMTP_PASSWORD": "pw-check-SECRET-smtp", "CRM_TOKEN": "hdr-check-SECRET-token"}


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.startswith(needle)]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


def problems_of(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml", env=ENV if env is None else env)
    return info.value


def test_one_load_reports_every_mistake_of_the_copied_example_with_its_line() -> None:
    """The copied example took six runs of `check`, one per mistake: now one run names them all."""
    text = EXAMPLE
    text = edit(text, "# timeout = 20 ", 'timeout = "20" ')  # a wrong type in [api]
    text = edit(text, '# listen = "127.0.0.1:9464"', 'listen = "localhost"')  # a bad value in [http]
    text = edit(text, "# max_attempts = 20", "max_attempts = 0")  # out of range in [delivery]
    text = edit(text, 'url = "https://crm.example.org', 'ulr = "https://crm.example.org')  # typo, url missing
    text = edit(text, 'to = ["sales@example.org"]', 'to = "sales@example.org"')  # wrong type, another sink
    text = edit(text, "[sinks.console]", '[sink.pager]\ntype = "console"\n\n[sinks.console]')  # singular
    text = edit(text, 'sinks = ["crm", "slack"]', 'sinks = ["crm", "slak"]')  # an unknown sink name
    expected = [
        ("api.timeout", line_of(text, 'timeout = "20"'), "must be a number, not a string"),
        ("http.listen", line_of(text, "listen ="), "'localhost' is not HOST:PORT"),
        ("delivery.max_attempts", line_of(text, "max_attempts"), "must be at least 1, not 0"),
        ("sinks.crm.url", line_of(text, "[sinks.crm]"), "is required"),
        ("sinks.crm.ulr", line_of(text, "ulr ="), "is not a known option (did you mean 'url'?)"),
        ("sinks.email.to", line_of(text, "to ="), "must be a list of strings, not a string"),
        ("sink", line_of(text, "[sink.pager]"), "did you mean [sinks.pager]?"),
        ("chatbots[1].sinks", line_of(text, 'sinks = ["crm", "slak"]'),
         "unknown sink 'slak' (did you mean 'slack'?) (configured: console, crm, email, slack)"),
    ]
    error = problems_of(text)
    assert [(p.key, p.line) for p in error.problems] == [(key, line) for key, line, _ in expected], str(error)
    lines = str(error).split("\n")
    assert len(lines) == len(expected)
    for line, (key, number, words) in zip(lines, expected, strict=True):
        assert line.startswith(f"config.toml:{number}: {key}: "), line
        assert words in line, line
    assert (error.key, error.line, error.path) == ("api.timeout", expected[0][1], "config.toml")
    assert error.message == "must be a number, not a string"


def test_a_typo_next_to_a_missing_required_key_names_both() -> None:
    text = ('[api]\napi_key = "k"\n\n[sinks.crm]\ntype = "webhook"\nulr = "https://x.org/h"\n\n'
            '[[chatbots]]\nserial_number = "a"\n')
    error = problems_of(text)
    assert str(error) == ("config.toml:4: sinks.crm.url: is required\n"
                          "config.toml:6: sinks.crm.ulr: is not a known option (did you mean 'url'?)")


@pytest.mark.parametrize(("header", "hint"), [
    ("[sink.pager]", "did you mean [sinks.pager]?"),
    ("[[chatbot]]", "did you mean [[chatbots]]?"),
    ("[pol]", "did you mean [poll]?"),
])
def test_a_misspelt_section_gets_its_line_and_the_header_it_meant(header: str, hint: str) -> None:
    text = (f'[api]\napi_key = "k"\n[sinks.c]\ntype = "console"\n[[chatbots]]\nserial_number = "a"\n\n'
            f'{header}\ninterval = 5\n')
    error = problems_of(text)
    assert len(error.problems) == 1, str(error)
    assert error.line == 8, str(error)
    assert hint in str(error)


def test_a_problem_in_one_sink_or_chatbot_hides_none_in_the_others() -> None:
    """A missing `type` skips its table (its other keys cannot be judged) without also making a
    chatbot that names it 'unknown'; every other sink and chatbot is still read."""
    text = """[api]
api_key = "k"

[sinks.a]
url = "https://x.org/h"

[sinks.b]
type = "console"
format = "yaml"

[sinks.c]
type = "email"
host = "h"
from = "a@b.co"
to = ["x@y.co"]
timezone = "Mars/Base"

[[chatbots]]
serial_number = "one"
sinks = ["a", "b"]
intervall = 5

[[chatbots]]
serial_number = "two"
lookback_days = 0

[[chatbots]]
serial_number = "one"
"""
    error = problems_of(text, env={})
    assert [(p.key, p.line) for p in error.problems] == [
        ("sinks.a.type", 4), ("sinks.b.format", 9), ("sinks.c.timezone", 16), ("chatbots[0].intervall", 21),
        ("chatbots[1].lookback_days", 25), ("chatbots[2].serial_number", 28)], str(error)
    assert "did you mean 'interval'?" in str(error)


def test_no_cascade_from_a_missing_variable_or_secret_file(tmp_path: Path) -> None:
    """A key with a problem is not blamed twice, nor does it make other keys look wrong."""
    text = ('[api]\napi_key = "${NOT_SET}"\n[sinks.s]\ntype = "slack"\n'
            f'webhook_url_file = "{tmp_path / "missing"}"\n[sinks.w]\ntype = "webhook"\nurl = "https://x.org"\n'
            'secret = "${ALSO_NOT_SET}"\n[[chatbots]]\nserial_number = "a"\n')
    error = problems_of(text, env={})
    assert [(p.key, p.line) for p in error.problems] == [
        ("api.api_key", 2), ("sinks.s.webhook_url_file", 5), ("sinks.w.secret", 9)], str(error)


def test_a_single_config_error_keeps_its_old_shape() -> None:
    error = ConfigError("is required", key="api.base_url", line=3, path="c.toml")
    assert str(error) == "c.toml:3: api.base_url: is required"
    assert [str(p) for p in error.problems] == [str(error)]
    assert (error.message, error.key, error.line, error.path) == ("is required", "api.base_url", 3, "c.toml")
    plain = ConfigError("leads show needs a SESSIONID")
    assert str(plain) == "leads show needs a SESSIONID" and plain.key is None


def test_each_problem_is_one_line_whatever_its_text(tmp_path: Path) -> None:
    odd = tmp_path / "a\nb"
    odd.mkdir()
    escaped = str(odd).replace("\n", "\\n")  # a TOML escape: the file name holds a line break
    text = (f'[api]\napi_key_file = "{escaped}"\n[sinks.c]\ntype = "console"\n'
            'x = 1\n[[chatbots]]\nserial_number = "a"\n')
    error = problems_of(text, env={})
    assert len(error.problems) == 2
    assert len(str(error).split("\n")) == 2, str(error)


def test_a_key_or_path_cannot_drive_the_terminal() -> None:
    text = ('[api]\napi_key = "k"\n"\\u001b[2J\\u202e" = 1\n[sinks.c]\ntype = "console"\n'
            '[[chatbots]]\nserial_number = "a"\n')
    error = problems_of(text, env={})
    assert str(error) == "config.toml:3: api.\\x1b[2J\\u202e: is not a known option (check its spelling and section)"
