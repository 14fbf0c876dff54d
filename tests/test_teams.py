"""The Teams sink against a local stand-in of a Workflows webhook trigger: the Adaptive Card that
arrives, where lead text goes (TextRuns, which read no markdown), the size limit, the "Open page"
action, how failures map, and that the flow's signature never shows."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from notifier.config import parse_config
from notifier.exceptions import ConfigError, PermanentError, RetryableError
from notifier.sample import send_sample
from notifier.sinks import create_sink
from notifier.sinks.base import SinkContext
from notifier.sinks.chatformat import WORD_JOINER, clean
from notifier.sinks.teams import BODY_LIMIT, TeamsConfig, TeamsSink, event_message

from .chatservers import (
    EVENT_ERROR,
    EVENT_TITLE,
    HOSTILE,
    TEAMS_SIG,
    ChatServers,
    config_text,
    delivery,
    event_delivery,
    template_problem,
)

OURS = {"New lead", "New appointment", "Message", "300 new leads and appointments", "2 new leads and appointments"}


def sink(http: aiohttp.ClientSession, url: str) -> TeamsSink:
    return TeamsSink(TeamsConfig(name="chat", type="teams", url=url), SinkContext(http=http))


def card(message: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = message["attachments"][0]["content"]
    return content


def runs(message: dict[str, Any]) -> list[str]:
    """Every TextRun's text, in order; and no lead text anywhere markdown is read."""
    found = []
    for element in card(message)["body"]:
        if element["type"] == "TextBlock":
            assert element["text"] in OURS  # markdown is read here: only our own words
        else:
            assert element["type"] == "RichTextBlock"
            found += [run["text"] for run in element["inlines"]]
    return found


async def test_a_hostile_lead_arrives_as_plain_text_runs(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.teams
    assert await sink(http, api.url).send(delivery()) == "HTTP 202 (flow started)"
    assert api.refused == [] and len(api.received[-1].body) <= BODY_LIMIT
    assert api.received[-1].headers["Content-Type"] == "application/json; charset=utf-8"
    message = api.messages[-1]
    assert card(message)["type"] == "AdaptiveCard" and "actions" not in card(message)  # javascript: opens nothing
    texts = runs(message)
    assert all("{{" not in t and "}}" not in t for t in texts)  # no {{DATE()}} function can form
    shown = [t.replace(WORD_JOINER, "") for t in texts]
    assert shown[:4] == ["Name: ", clean(HOSTILE["Name"]), "Email: ", "eve@example.org X: y"]
    assert "&<> [+1](https://evil.example)" in shown and "javascript:alert(1)" in shown
    assert shown[12:15] == ["# Head", "> quote", "- [Your bank](https://evil.example) ||spoiler|| `code` <users/all> "
                            "<t:0:R> <at>Boss</at> {% for x in y %}{{ 7*7 }}"]
    assert shown[15] == "@everyone" and shown[-2].endswith("…") and shown[-1].startswith("SessionID 7 · msg_")


async def test_an_event_arrives_as_its_title_and_lines_in_text_runs(http: aiohttp.ClientSession,
                                                                   chat: ChatServers) -> None:
    teams = sink(http, chat.teams.url)
    event = event_delivery()
    assert await teams.send(event) == "HTTP 202 (flow started)"
    message = chat.teams.messages[-1]
    assert json.loads(teams.render(event)) == message and "actions" not in card(message)
    texts = runs(message)  # no TextBlock: the title names a chatbot, so it is a TextRun too
    assert all("{{" not in t and "}}" not in t for t in texts)
    shown = [t.replace(WORD_JOINER, "") for t in texts]
    assert shown[:5] == [EVENT_TITLE, "Error: ", EVENT_ERROR, "Code: ", "401"]
    assert shown[-1].startswith("chatbot.poll_failing · msg_")
    await teams.send_digest([event, delivery()])  # an event is never in a digest; if one were, a line
    digest = [t.replace(WORD_JOINER, "") for t in runs(chat.teams.messages[-1])]
    assert digest[:2] == [EVENT_TITLE, "Lead "] and chat.teams.refused == []


@pytest.mark.parametrize("content", ['"' * 30_000, "\\" * 30_000, "€" * 30_000, "😀" * 30_000,
                                     "x\n" * 8_000, "{{" * 15_000])
async def test_the_card_stays_under_the_size_limit(http: aiohttp.ClientSession, chat: ChatServers,
                                                   content: str) -> None:
    await sink(http, chat.teams.url).send(delivery(Content=content))
    assert chat.teams.refused == [] and len(chat.teams.received[-1].body) <= BODY_LIMIT
    assert runs(chat.teams.messages[-1])[-2].endswith("…")


@pytest.mark.parametrize(("uri", "action"), [
    ("https://shop.example.org/p?a=1&b=2", True), ("http://127.0.0.1:8080/x", True),
    ("https://bank.example@evil.example/", False), ("ftp://files.example.org/", False),
    ("https://shop.example.org/a b", False), ("//evil.example", False), ("https://shop.example.org:99999/", False),
])
async def test_open_page_only_for_a_web_link(http: aiohttp.ClientSession, chat: ChatServers, uri: str,
                                             action: bool) -> None:
    await sink(http, chat.teams.url).send(delivery(URI=uri))
    expected = [{"type": "Action.OpenUrl", "title": "Open page", "url": uri}] if action else None
    assert card(chat.teams.messages[-1]).get("actions") == expected


async def test_a_digest_is_one_card(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    await sink(http, chat.teams.url).send_digest([delivery(SessionID=i) for i in range(300)])
    assert len(chat.teams.messages) == 1 and chat.teams.refused == []
    texts = runs(chat.teams.messages[0])
    assert texts[0] == "Lead " and texts[-1].startswith("…and ") and texts[-1].endswith(" more")


@pytest.mark.parametrize(("status", "body", "headers", "wait"), [
    (429, {"error": {"code": "WorkflowTriggerIsThrottled", "message": "throttled"}}, {"Retry-After": "30"}, 30.0),
    (502, "<html><title>Bad Gateway</title></html>", {}, None),
])
async def test_retryable_answers(http: aiohttp.ClientSession, chat: ChatServers, status: int, body: Any,
                                 headers: dict[str, str], wait: float | None) -> None:
    chat.teams.answer_next(status, body, headers)
    with pytest.raises(RetryableError) as info:
        await sink(http, chat.teams.url).send(delivery())
    assert info.value.retry_after == wait


@pytest.mark.parametrize(("status", "code", "words"), [
    (400, "TriggerInputSchemaMismatch", "When a Teams webhook request is received"),
    (404, "WorkflowNotFound", "the flow does not exist"),
])
async def test_permanent_answers(http: aiohttp.ClientSession, chat: ChatServers, status: int, code: str,
                                 words: str) -> None:
    chat.teams.answer_next(status, {"error": {"code": code, "message": f"see {chat.teams.url}"}})
    with pytest.raises(PermanentError, match=words) as info:
        await sink(http, chat.teams.url).send(delivery())
    assert f"answered {status}: {code}: see ***" in str(info.value) and TEAMS_SIG not in str(info.value)


async def test_a_wrong_signature_is_permanent_and_not_shown(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    wrong = chat.teams.url.replace(TEAMS_SIG, "wrong-signature-0123")
    with pytest.raises(PermanentError, match="signature is wrong") as info:
        await sink(http, wrong).send(delivery())
    assert "wrong-signature" not in str(info.value) and "sig=" not in str(info.value)
    assert "wrong-signature" not in sink(http, wrong).render(delivery())


@pytest.mark.parametrize("host", ["prod-42.westeurope.logic.azure.com:443",
                                  "default0a1b.2c.environment.api.powerplatform.com", "flows.example.net"])
def test_any_https_host_is_taken(host: str) -> None:
    url = f"https://{host}/workflows/f00d/triggers/manual/paths/invoke?api-version=1&sv=1.0&sig={TEAMS_SIG}"
    config = parse_config(config_text(f'type = "teams"\nurl = "{url}"'), env={})
    assert {url, TEAMS_SIG} <= config.secrets and config.sinks["chat"].human
    with pytest.raises(ConfigError, match=r"sinks\.chat\.url: must be an http:// or https:// URL") as info:
        parse_config(config_text(f'type = "teams"\nurl = "{url.replace("https", "teams")}"'), env={})
    assert TEAMS_SIG not in str(info.value)


async def test_test_sink_shows_the_message_and_sends_it(chat: ChatServers) -> None:
    out = io.StringIO()
    config = parse_config(config_text(f'type = "teams"\nurl = "{chat.teams.url}"'), env={})
    assert await send_sample(config, "chat", out)
    assert len(chat.teams.messages) == 1 and '"type": "AdaptiveCard"' in out.getvalue()
    assert "Test Lead" in out.getvalue()
    assert out.getvalue().rstrip().endswith("OK: sink 'chat' accepted the sample lead.")
    assert not any(secret in out.getvalue() for secret in (TEAMS_SIG,))


# -- templates -------------------------------------------------------------------------------------------
def templated(http: aiohttp.ClientSession, url: str, templates: str) -> TeamsSink:
    config = parse_config(config_text(f'type = "teams"\nurl = "{url}"\n{templates}'), env={})
    sink = create_sink(config.sinks["chat"], SinkContext(http=http))
    assert isinstance(sink, TeamsSink)
    return sink


async def test_a_text_template_is_a_card_of_text_runs(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.teams
    teams = templated(http, api.url, 'text = """**New {{ type }}** from {{ lead.Name }}\n{{ lead.Content }}"""')
    hostile = delivery()
    await teams.send(hostile)
    assert api.refused == [] and json.loads(teams.render(hostile)) == api.messages[-1]  # test-sink shows this
    message = api.messages[-1]
    assert len(api.received[-1].body) <= BODY_LIMIT and "actions" not in card(message)  # javascript: opens nothing
    texts = runs(message)  # no TextBlock at all: markdown is read nowhere, not even in the template's text
    assert all("{{" not in t and "}}" not in t for t in texts) and texts[-1].endswith("…")
    shown = "\n".join(texts).replace(WORD_JOINER, "")
    assert shown.startswith(f"**New Lead** from {clean(HOSTILE['Name'], lines=True)}\n# Head\n> quote\n- [Your bank]"
                            "(https://evil.example) ||spoiler|| `code` <users/all> <t:0:R> <at>Boss</at> "
                            "{% for x in y %}{{ 7*7 }}\n@everyone\nz😀&<")
    await teams.send(event_delivery())  # an operational event is never a lead's template
    assert api.messages[-1] == event_message(event_delivery())


async def test_no_two_values_form_a_date_function(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    teams = templated(http, chat.teams.url, 'text = "{{ lead.Name }}{{ lead.Email }}"')
    await teams.send(delivery(Name="{", Email="{DATE(2030-01-01T00:00:00Z, LONG)}}", URI="https://shop.example.org/"))
    message = chat.teams.messages[-1]
    assert runs(message) == ["{\u2060{DATE(2030-01-01T00:00:00Z, LONG)}\u2060}"]
    assert card(message)["actions"] == [{"type": "Action.OpenUrl", "title": "Open page", "url": "https://shop.example.org/"}]


async def test_a_digest_template_and_the_default_beside_it(http: aiohttp.ClientSession, chat: ChatServers) -> None:
    api = chat.teams
    teams = templated(http, api.url, 'digest_text = "{{ count }} new\\n{% for l in leads %}{{ l.type }}: '
                                     '{{ l.lead.Name }}\\n{% endfor %}"')
    await teams.send_digest([delivery(Name="Ann **x**"), delivery(Name="{{ 7*7 }}", Type="Appointment")])
    assert [t.replace(WORD_JOINER, "") for t in runs(api.messages[-1])] == [
        "2 new", "Lead: Ann **x**", "Appointment: {{ 7*7 }}"]
    await teams.send_digest([delivery(SessionID=i) for i in range(300)])
    assert api.refused == [] and len(api.received[-1].body) <= BODY_LIMIT
    texts = runs(api.messages[-1])
    assert texts[0] == "300 new" and texts[1].startswith("Lead: @") and texts[-1].endswith("…")
    await teams.send(delivery())  # no text template: the default card
    assert card(api.messages[-1])["body"][0]["text"] == "New lead"


def test_a_template_problem_is_a_config_error_with_its_key_and_line() -> None:
    sink = f'type = "teams"\nurl = "https://flows.example.net/w?sig={TEAMS_SIG}"\n'
    message = template_problem(sink + 'text = """{{ lead.Name }}\n{% if type %}{{ lead.Name }}"""', "text")
    assert message.startswith("template syntax error on line 2 of the template: Unexpected end of template")
    message = template_problem(sink + 'digest_text = "{{ count }} {{ chatbot }}"', "digest_text")
    assert "unknown variable 'chatbot'" in message
