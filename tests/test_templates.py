"""Message templates (issue 16): the operator's words, lead text as data. Every hostile lead is
asserted on what the real receiving side got: the webhook receiver (signatures checked on its own),
the Slack stand-in, aiosmtpd, the console's stream."""

from __future__ import annotations

import io
import json
import re
import urllib.parse
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier import cli
from notifier.config import Config, load_config, parse_config
from notifier.exceptions import ConfigError, PermanentError
from notifier.leads import parse_records
from notifier.sample import send_sample
from notifier.service import Service
from notifier.simulator import Simulator
from notifier.sinks import SinkContext, create_sink
from notifier.sinks.base import SinkConfig
from notifier.sinks.webhook import WebhookConfig, WebhookSink
from notifier.types import Delivery

from .conftest import SERIAL_A, WEBHOOK_SECRET, Mailbox, Receiver, SlackStandIn, serve, write_config

HOSTILE = {
    "Type": "Appointment", "SessionID": 4242, "CreateTime": "2025-06-01T12:00:00.5-07:00",
    "Name": '<!channel> @here Eve "q" \\ {{ 7*7 }} {% for x in y %}\r\nBcc: x@evil.example',
    "Email": "eve@example.org\r\nX-Injected: 1", "PhoneNumber": "+1 555 & <tel:1> \x1b[2J",
    "Content": "<script>alert(1)</script> @everyone <https://evil.example|bank> {# c #}\n" + "A" * 10_000,
    "URI": "https://shop.example.org/?a=1&b=<2>", "Count": 3,
}
MENTION = "<!subteam^S0123|sales>"


def delivery(record: dict[str, Any] | None = None, chatbot: str = "sales") -> Delivery:
    lead = parse_records("serial-1", [record or HOSTILE]).leads[0]
    return Delivery(id=1, sink="s", chatbot=chatbot, lead=lead, detected_at=datetime(2025, 6, 1, 19, 0, 1, tzinfo=UTC))


def lead(**fields: Any) -> Delivery:
    return delivery({**HOSTILE, **fields})


def document(sinks: str) -> str:
    return f'[api]\napi_key = "k"\n\n[[chatbots]]\nserial_number = "a"\n\n{sinks}'


def configured(sink: str, env: dict[str, str] | None = None) -> SinkConfig:
    """[sinks.s] with these lines, as the config loader reads it."""
    return parse_config(document(f"[sinks.s]\n{sink}\n"), env=env or {}).sinks["s"]


def webhook(sink: str) -> WebhookSink:
    """A webhook sink that is only asked for its body (no session: it never sends)."""
    config = configured(sink)
    assert isinstance(config, WebhookConfig)
    return WebhookSink(config, SinkContext(http=None))  # type: ignore[arg-type]


@dataclass
class MethodReceiver(Receiver):
    """The conftest receiver (signatures verified its own way), also recording each request's method."""

    methods: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.methods.append(request.method)
        return await super().handle(request)


@pytest.fixture
async def hook() -> Any:
    rec = MethodReceiver()
    runner, rec.url = await serve(rec.handle)
    yield rec
    rec.released.set()
    await runner.cleanup()


# -- webhook bodies ---------------------------------------------------------------------------------
CRM = """type = "webhook"
url = "{url}"
secret = "{secret}"
method = "PUT"
timezone = "America/Los_Angeles"

[sinks.s.body]
source = "smarterbot"
score = 10
session = "{{{{ lead.SessionID }}}}"
record = "{{{{ lead }}}}"
tags = ["{{{{ type }}}}", "{{{{ chatbot }}}}"]
when = "{{{{ created | datetime('iso') }}}}"

[sinks.s.body.contact]
name = "{{{{ lead.Name }}}}"
email = "{{{{ lead.Email }}}}"
note = "{{{{ type }}}} via {{{{ chatbot }}}}: {{{{ lead.Content }}}}"
"""


async def test_a_crm_body_carries_hostile_text_as_data(http: aiohttp.ClientSession, hook: MethodReceiver) -> None:
    sink = create_sink(configured(CRM.format(url=hook.url, secret=WEBHOOK_SECRET)), SinkContext(http=http))
    sent = lead()
    assert await sink.send(sent) == "HTTP 200"
    (got,) = hook.accepted  # the receiver verified the signature over exactly these bytes
    assert hook.methods == ["PUT"] and hook.bad_signatures == 0
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["webhook-id"] == sent.webhook_id
    raw = sent.lead.raw
    assert got.json == {
        "source": "smarterbot", "score": 10, "session": 4242, "record": raw,
        "tags": ["Appointment", "sales"], "when": "2025-06-01T12:00:00.500000-07:00",
        "contact": {"name": raw["Name"], "email": raw["Email"],
                    "note": f"Appointment via sales: {raw['Content']}"},
    }
    assert "{{ 7*7 }}" in got.json["contact"]["name"] and "49" not in got.json["contact"]["name"]
    await sink.send(sent)  # a retry: the same bytes
    assert hook.accepted[1].body == got.body


async def test_a_form_body_for_an_sms_gateway(http: aiohttp.ClientSession, hook: MethodReceiver) -> None:
    config = configured(f'type = "webhook"\nurl = "{hook.url}"\nsecret = "{WEBHOOK_SECRET}"\ncontent_type = "form"\n'
                        'body = { to = "+15550100", api_key = "${SMS_KEY}", count = 2, '
                        'text = "{{ type }}: {{ lead.Name }} {{ lead.PhoneNumber }}" }',
                        env={"SMS_KEY": "sms-key-0123456789"})
    sink = create_sink(config, SinkContext(http=http))
    assert isinstance(config, WebhookConfig)
    assert "sms-key-0123456789" not in json.dumps(config.templates)  # `check` shows the ${VAR}, not its value
    await sink.send(lead(Name="Eve&to=+1999&api_key=x\r\n"))
    (got,) = hook.accepted
    assert got.headers["Content-Type"] == "application/x-www-form-urlencoded" and hook.methods == ["POST"]
    fields = urllib.parse.parse_qs(got.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert fields == {"to": ["+15550100"], "api_key": ["sms-key-0123456789"], "count": ["2"],
                      "text": [f"Appointment: Eve&to=+1999&api_key=x\r\n {HOSTILE['PhoneNumber']}"]}


def strict_loads(body: bytes) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")
    return json.loads(body.decode("utf-8"), parse_constant=refuse)


BODY_SINK = webhook('type = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
                    'body = { name = "{{ lead.Name }}", all = "{{ lead }}", '
                    'both = "{{ lead.Name }}|{{ lead.Content }}" }')


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(), st.text(max_size=50))
def test_the_json_body_is_valid_json_for_any_lead_text(name: str, content: str) -> None:
    sent = lead(Name=name, Content=content)
    body = BODY_SINK.body(sent)
    parsed = strict_loads(body)
    raw = sent.lead.raw  # the record as stored (a lone surrogate is U+FFFD there already)
    assert parsed == {"name": raw["Name"], "all": raw, "both": f"{raw['Name']}|{raw['Content']}"}


async def test_a_template_failing_on_a_real_lead_is_a_dead_letter_that_says_why(http: aiohttp.ClientSession,
                                                                              hook: MethodReceiver) -> None:
    hook.secret = None
    config = configured(f'type = "webhook"\nurl = "{hook.url}"\nbody = {{ n = "{{{{ lead.Count + 1 }}}}" }}')
    sink = create_sink(config, SinkContext(http=http))
    with pytest.raises(PermanentError, match="template body failed for this lead: TypeError"):
        await sink.send(lead(Count="many"))
    assert hook.received == []
    await sink.send(lead(Count=41))
    assert hook.accepted[0].json == {"n": 42}


# -- Slack ---------------------------------------------------------------------------------------------
def assert_no_ping_but(text: str, allowed: list[str]) -> None:
    assert re.findall(r"<[^>]*>", text) == allowed, text
    assert not re.search(r"(?<!&lt;!)(?<!&lt;)@(channel|here|everyone)", text, re.IGNORECASE), text


async def test_slack_text_mentions_exactly_whom_the_operator_named(http: aiohttp.ClientSession,
                                                                   slack: SlackStandIn) -> None:
    config = configured(f'type = "slack"\ntoken = "{slack.token}"\nchannel = "C1"\nbase_url = "{slack.base}"\n'
                        f'mention = "{MENTION}"\nmention_types = ["Appointment"]\ntimezone = "Europe/Berlin"\n'
                        'text = """*New {{ type }}* from {{ lead.Name }} at {{ created | datetime("%H:%M %Z") }}\n'
                        '{{ lead.Content }}"""')
    sink = create_sink(config, SinkContext(http=http))
    await sink.send(lead())
    await sink.send(lead(Type="Lead"))
    appointment, plain_lead = slack.messages
    assert "blocks" not in appointment
    text = appointment["text"]
    assert text.startswith(f"{MENTION} *New Appointment* from &lt;!channel&gt; @\u2060here Eve")
    assert "at 21:00 CEST\n" in text  # created in the sink's timezone
    assert "{{ 7*7 }} {% for x in y %}" in text and "&lt;script&gt;" in text and "\r" not in text
    assert len(text) <= 4000 and text.endswith("…")
    assert_no_ping_but(text, [MENTION])
    assert plain_lead["text"].startswith("*New Lead* from")  # mention_types: appointments only
    assert_no_ping_but(plain_lead["text"], [])


async def test_slack_blocks_and_digest_text(http: aiohttp.ClientSession, slack: SlackStandIn) -> None:
    config = configured(
        f'type = "slack"\nwebhook_url = "{slack.webhook_url}"\nmention = "<@U0123ABCD>"\n'
        'digest_text = "{{ count }} new:{% for l in leads %} {{ l.lead.Name }} ({{ l.type }}){% endfor %}"\n'
        '[[sinks.s.blocks]]\ntype = "section"\n'
        'text = { type = "mrkdwn", text = "*{{ lead.Name }}*\\n{{ lead.Content }}" }\n'
        '[[sinks.s.blocks]]\ntype = "context"\nelements = [{ type = "mrkdwn", text = "{{ webhook_id }}" }]\n')
    sink = create_sink(config, SinkContext(http=http))
    sent = lead()
    await sink.send(sent)
    await sink.send_digest([sent, lead(Type="Lead", Name="Ann <@U999>")])
    message, digest = slack.messages
    mention_block, section, context = message["blocks"]
    assert mention_block == {"type": "section", "text": {"type": "mrkdwn", "text": "<@U0123ABCD>"}}
    assert section["text"]["text"].startswith("*&lt;!channel&gt; @\u2060here Eve")
    assert len(section["text"]["text"]) <= 3000
    assert context["elements"][0]["text"] == sent.webhook_id
    assert message["text"].startswith("<@U0123ABCD> New appointment from")  # the default notification text
    for text in (section["text"]["text"], message["text"]):
        assert_no_ping_but(text, [] if text is not message["text"] else ["<@U0123ABCD>"])
    assert "blocks" not in digest
    assert digest["text"].startswith("<@U0123ABCD> 2 new: &lt;!channel&gt;")
    assert digest["text"].endswith("(Appointment) Ann &lt;@U999&gt; (Lead)")


# -- email ---------------------------------------------------------------------------------------------
async def test_email_templates_keep_headers_and_html_safe(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    config = configured(
        f'type = "email"\nhost = "{mailbox.host}"\nport = {mailbox.port}\nsecurity = "none"\n'
        'from = "notifier@example.com"\nto = ["sales@example.com"]\n'
        'subject = "[{{ chatbot }}] {{ type }}: {{ lead.Name }}"\n'
        'text_body = "Call {{ lead.Name }} on {{ lead.PhoneNumber }}.\\n{{ lead.Content }}"\n'
        'html_body = "<p>Call <b>{{ lead.Name }}</b></p><pre>{{ lead.Content }}</pre>"\n'
        'digest_subject = "{{ count }} leads"\n'
        'digest_text = "{% for l in leads %}- {{ l.lead.Name }}\\n{% endfor %}"\n')
    sink = create_sink(config, SinkContext(http=http))
    await sink.send(lead())
    await sink.send_digest([lead(), lead(Name="Bo")])
    mail, digest = mailbox.parsed(0), mailbox.parsed(1)
    assert mailbox.messages[0].rcpt_tos == ["sales@example.com"]
    assert mail["Subject"] == '[sales] Appointment: <!channel> @here Eve "q" \\ {{ 7*7 }} {% for x in y %} Bcc: ' \
                              "x@evil.example"
    assert mail["Bcc"] is None and mail["X-Injected"] is None
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")  # SMTP's line ends
    assert "\r" not in text and text.startswith(
        'Call <!channel> @here Eve "q" \\ {{ 7*7 }} {% for x in y %}\nBcc: x@evil.example on +1 555 '
        "& <tel:1> [2J.\n<script>")  # plain text: nothing escaped, control characters gone
    assert "A" * 10_000 in text
    html = mail.get_body(("html",)).get_content()
    assert html.startswith("<p>Call <b>&lt;!channel&gt; @here Eve &#34;q&#34; \\ {{ 7*7 }}")
    assert "<pre>&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert digest["Subject"] == "2 leads"
    assert digest.get_body(("plain",)).get_content().replace("\r\n", "\n").endswith("Bcc: x@evil.example\n- Bo\n")
    assert digest.get_body(("html",)) is None  # digest_text without digest_html: the operator's text alone


async def test_a_plain_subject_stays_a_prefix(http: aiohttp.ClientSession, mailbox: Mailbox) -> None:
    config = configured(f'type = "email"\nhost = "{mailbox.host}"\nport = {mailbox.port}\nsecurity = "none"\n'
                        'from = "n@example.com"\nto = ["s@example.com"]\nsubject = "[Sales]"\n'
                        'html_body = "<h1>{{ lead.Name }}</h1>"')
    await create_sink(config, SinkContext(http=http)).send(lead(Name="Ann"))
    mail = mailbox.parsed()
    assert mail["Subject"] == "[Sales] New appointment: Ann via sales"
    assert "Name: Ann" in mail.get_body(("plain",)).get_content()  # the default text part
    assert mail.get_body(("html",)).get_content().strip() == "<h1>Ann</h1>"


# -- console ------------------------------------------------------------------------------------------
async def test_console_templates_print_one_safe_value_each(http: aiohttp.ClientSession) -> None:
    screen = io.StringIO()
    config = configured('type = "console"\ntext = "{{ type }} | {{ lead.Name }} | {{ lead.PhoneNumber }}"\n'
                        'digest_text = "{{ count }} leads: {{ leads | map(attribute=\'chatbot\') | join(\', \') }}"')
    sink = create_sink(config, SinkContext(http=http, stdout=screen))
    await sink.send(lead())
    await sink.send_digest([lead(), delivery(chatbot="bot\x1b[31m")])
    line, digest = screen.getvalue().splitlines()
    assert line == ('Appointment | <!channel> @here Eve "q" \\ {{ 7*7 }} {% for x in y %}\ufffd\ufffdBcc: '
                    "x@evil.example | +1 555 & <tel:1> \ufffd[2J")
    assert digest == "2 leads: sales, bot\ufffd[31m"


# -- the config: every problem at once, with key and line ------------------------------------------
BROKEN = """[api]
api_key = "k"

[[chatbots]]
serial_number = "a"

[sinks.crm]
type = "webhook"
url = "https://crm.example.org/x"
content_type = "form"
body = { name = "{{ lead.Nmae }}", nested = { a = "b" } }

[sinks.slack]
type = "slack"
webhook_url = "https://hooks.slack.com/services/T/B/X"
mention = "@sales"
text = '''New lead
{% if type == "Lead" %}{{ lead.Name }}{% endif
'''

[sinks.mail]
type = "email"
host = "h"
from = "a@b.co"
to = ["x@y.co"]
subject = "{{ chatbott }}: {{ lead.Name }}"
html_body = "{{ lead.Name | safe }}"
digest_text = "{{ lead.Name }}"

[sinks.screen]
type = "console"
format = "json"
text = "{{ lead.Name }}"
"""


def test_template_problems_are_config_errors_with_key_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BROKEN, "config.toml", env={})
    found = {p.key: (p.line, p.message) for p in info.value.problems}
    assert found["sinks.crm.body.name"][0] == 11
    assert "lead has no field 'Nmae' (did you mean 'Name'?)" in found["sinks.crm.body.name"][1]
    assert found["sinks.crm.body"] == (11, found["sinks.crm.body"][1])
    assert "flat table" in found["sinks.crm.body"][1]
    assert found["sinks.slack.mention"][0] == 16 and "pings nobody" in found["sinks.slack.mention"][1]
    assert found["sinks.slack.text"][0] == 17
    assert re.match(r"template syntax error on line 2 of the template: unexpected end of template",
                    found["sinks.slack.text"][1]), found["sinks.slack.text"]
    assert found["sinks.mail.subject"][0] == 26
    assert "unknown variable 'chatbott' (did you mean 'chatbot'?)" in found["sinks.mail.subject"][1]
    assert found["sinks.mail.html_body"][0] == 27 and "No filter named 'safe'" in found["sinks.mail.html_body"][1]
    assert found["sinks.mail.digest_text"][0] == 28
    assert "unknown variable 'lead'" in found["sinks.mail.digest_text"][1] and "leads, count" in \
        found["sinks.mail.digest_text"][1]
    assert found["sinks.screen.text"][0] == 33 and 'format = "text"' in found["sinks.screen.text"][1]
    # `check` says all of them, one line each, and exits 2: a SIGHUP with this file keeps the old config
    path = tmp_path / "config.toml"
    path.write_text(BROKEN.replace('[api]\n', f'[state]\npath = "{tmp_path / "s.db"}"\n\n[api]\n'))
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stderr", err)
        assert cli.main(["check", "--config", str(path)]) == 2
    assert len(re.findall(r"config\.toml:\d+: sinks\.", err.getvalue())) == len(found) == 8


def test_templates_are_compiled_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = webhook(CRM.format(url="http://127.0.0.1:9/x", secret=WEBHOOK_SECRET))
    from jinja2 import Environment

    def no_compiling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a template was compiled while sending")
    monkeypatch.setattr(Environment, "compile", no_compiling)
    monkeypatch.setattr(Environment, "compile_expression", no_compiling)
    for name in ("Ann", "{{ 7*7 }}", "{% raw %}"):
        assert strict_loads(sink.body(lead(Name=name)))["contact"]["name"] == name


# -- test-sink ----------------------------------------------------------------------------------------
async def test_test_sink_renders_a_real_lead_from_the_state(simulator: tuple[Simulator, str], hook: MethodReceiver,
                                                          tmp_path: Path) -> None:
    sim, url = simulator
    hook.secret = None
    sinks = (f'[sinks.crm]\ntype = "webhook"\nurl = "{hook.url}"\n'
             'body = { who = "{{ lead.Name }}", session = "{{ lead.SessionID }}" }\n')
    chatbots = f'[[chatbots]]\nname = "alpha"\nserial_number = "{SERIAL_A}"\n'
    path = write_config(tmp_path, url, sinks=sinks, chatbots=chatbots, poll='first_run = "notify"')
    record = sim.add_lead(SERIAL_A, Name="Real <b>Ruth</b> {{ 7*7 }}")
    config: Config = load_config(path)
    assert await Service(config).once() == []
    out = io.StringIO()
    assert await send_sample(config, "crm", out, session=record["SessionID"])
    first, again = hook.accepted
    assert again.json == first.json  # the simulator writes SessionID as a number or as text: as the API gave it
    assert first.json["who"] == "Real <b>Ruth</b> {{ 7*7 }}" and int(first.json["session"]) == record["SessionID"]
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    shown = out.getvalue()
    assert f"Sending Lead {record['SessionID']} of chatbot 'alpha' from the state" in shown
    assert '"who": "Real <b>Ruth</b> {{ 7*7 }}"' in shown and "OK: sink 'crm' accepted the lead." in shown
    with pytest.raises(Exception, match="no lead with SessionID 5 in the state"):
        await send_sample(config, "crm", io.StringIO(), session=5)
    sample = io.StringIO()
    assert await send_sample(replace(config), "crm", sample)
    assert hook.accepted[-1].json["who"] == "Test Lead (smarterbot-notifier test-sink)"


def test_the_readme_template_examples_are_valid() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Templates\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 5
    env = {"CRM_TOKEN": "crm-token-123456", "SMS_API_KEY": "sms-key-123456",
           "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
           "TELEGRAM_BOT_TOKEN": "123456789:AAE-telegram-token-Q7pLk2Vd9sRtXw",
           "DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/1/discord-token-abcdef",
           "GOOGLE_CHAT_WEBHOOK_URL": "https://chat.googleapis.com/v1/spaces/A/messages?key=k1234567&token=t1234567",
           "TEAMS_WORKFLOW_URL": "https://flows.example.net/workflows/f00d?sig=teams-sig-123456"}
    config = parse_config(document("\n".join(blocks)), env=env)
    assert {name: len(sink.templates) for name, sink in config.sinks.items()} == {  # type: ignore[attr-defined]
        "crm": 1, "sms": 1, "slack": 2, "mail": 4, "telegram": 2, "discord": 2, "googlechat": 2, "teams": 2}


async def test_redaction_absent_fields_and_dict_methods(http: aiohttp.ClientSession) -> None:
    screen = io.StringIO()
    config = configured('type = "console"\nredact = ["Email"]\n'
                        "text = \"{{ lead.Email }}|{{ lead.get('Extra', '-') }}|{{ lead.PhoneNumber }}|"
                        '{{ lead.Count }}"')
    sink = create_sink(config, SinkContext(http=http, stdout=screen))
    record = {key: value for key, value in HOSTILE.items() if key not in ("PhoneNumber", "Count")}
    await sink.send(delivery({**record, "Email": "jane@example.org", "get": "a field named get"}))
    assert screen.getvalue() == "j***@example.org|-||\n"  # masked; lead.get is still the method


@pytest.mark.parametrize(("template", "said"), [
    ("{% autoescape false %}{{ lead.Name }}{% endautoescape %}", "`{% autoescape %}` is not allowed"),
    ('{{ "x" * 100000000 }}', "would make more than 100,000 characters"),
    ("{{ 9 ** 100000000 }}", "exponent"),
    ("{% for i in range(1000000) %}{{ i }}{% endfor %}", "range() of more than 10,000 items"),
    # the second review's: a chain of powers, a multiplied list joined, `+` doubling, big padding
    ("{{ (((2 ** 64) ** 64) ** 64) > 1 }}", "`**` would make a number of more than 100,000 bits"),
    ('{{ (["x" * 100000] * 20000) | join }}', "`join` would make more than 100,000 characters"),
    ('{% set ns = namespace(s="x") %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}',
     "`+` would make more than 100,000 characters"),
    ('{{ lead.Name | center(1000000000) }}', "`center` would make more than 100,000 characters"),
    ('{{ lead.Name | replace("", "y" * 50000) }}', "`replace` would make more than 100,000 characters"),
    ("{{ lipsum(2000) }}", "lipsum"),
])
def test_what_would_turn_markup_loose_or_stall_the_daemon_is_a_config_error(template: str, said: str) -> None:
    """The review's findings: `{% autoescape false %}` let a lead's HTML through to email and
    Telegram; `"x" * 100000000` or `9 ** 100000000` (rendered on the event loop) took seconds and
    100 MB per lead."""
    text = ('[api]\napi_key = "k-12345678"\n[sinks.tg]\ntype = "telegram"\ntoken = "123456:' + "A" * 35 + '"\n'
            f'chat_id = "-100123"\ntext = {json.dumps(template)}\n[[chatbots]]\nserial_number = "s1"\n')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml", env={})
    assert [p.key for p in info.value.problems] == ["sinks.tg.text"] and said in info.value.problems[0].message


@pytest.mark.parametrize("secret", ["pa{#ss#}word99", "Zx9{{ lead.Name }}Qq", "k3y{{x}}77", 'q"uo\\te{% raw %}😀\n'])
async def test_an_environment_secret_goes_into_a_body_as_written(http: aiohttp.ClientSession, secret: str) -> None:
    """The review's finding: `${VAR}` was pasted into the template source, so a password holding
    `{#` lost characters, one holding `{{ … }}` was run, and one that did not compile was quoted
    by the config error. It is a string, in a plain leaf and beside a template alike."""
    text = ('[api]\napi_key = "k-12345678"\n[sinks.sms]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
            'body = { auth = "${SMS_PASS}", header = "Bearer ${SMS_PASS} for {{ lead.Name }}" }\n'
            '[[chatbots]]\nserial_number = "s1"\n')
    config = parse_config(text, "config.toml", env={"SMS_PASS": secret})
    assert secret in config.secrets
    sink = WebhookSink(config.sinks["sms"], SinkContext(http=http))  # type: ignore[arg-type]
    body = json.loads(sink.body(lead(Name="Ada")))
    assert body == {"auth": secret, "header": f"Bearer {secret} for Ada"}


async def test_slack_blocks_keep_each_elements_limit_and_urls_unescaped(
        http: aiohttp.ClientSession, slack: SlackStandIn) -> None:
    """The review's finding: only 3,000 characters were enforced everywhere, so a header (150) or
    a button (75) built as the README advised made Slack refuse the message, and a button's URL
    arrived as `&amp;`."""
    config = configured(
        f'type = "slack"\nwebhook_url = "{slack.webhook_url}"\n'
        '[[sinks.s.blocks]]\ntype = "header"\ntext = { type = "plain_text", text = "{{ lead.Name }}" }\n'
        '[[sinks.s.blocks]]\ntype = "actions"\n'
        'elements = [{ type = "button", text = { type = "plain_text", text = "Open {{ lead.Name }}" }, '
        'url = "{{ lead.URI }}" }]\n'
        '[[sinks.s.blocks]]\ntype = "section"\nfields = [{ type = "mrkdwn", text = "{{ lead.Content }}" }]\n')
    sink = create_sink(config, SinkContext(http=http))
    await sink.send(lead(Name="<&>" * 100, URI="https://crm.example/lead?a=1&b=2", Content="x" * 5000))
    header, actions, section = slack.messages[-1]["blocks"]
    title = header["text"]["text"]
    assert len(title) <= 150 and title.endswith("…") and title.count("&") == title.count(";")  # no split entity
    button = actions["elements"][0]
    assert len(button["text"]["text"]) <= 75
    assert button["url"] == "https://crm.example/lead?a=1&b=2"
    assert len(section["fields"][0]["text"]) <= 2000


@pytest.mark.parametrize("leaf", ['{{ lead.Name ~ "${TOK}" }}', '{{ "${TOK}" }}',
                                  '{% if lead.Name == "${TOK}" %}x{% endif %}'])
def test_a_secret_inside_an_expression_is_refused_by_name_never_shown(leaf: str) -> None:
    """The second review's finding: `${VAR}` inside `{{ }}` broke the expression, and the syntax
    error quoted the secret in `check`, `check --json` and the daemon's log."""
    secret = "sk_live_Abc123Secret"
    text = ('[api]\napi_key = "k-12345678"\n[sinks.crm]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
            f'body = {{ token = {json.dumps(leaf)} }}\n[[chatbots]]\nserial_number = "s1"\n')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml", env={"TOK": secret})
    (problem,) = info.value.problems
    assert problem.key == "sinks.crm.body.token" and "${TOK} inside {{ }} or {% %}" in problem.message
    assert "sk_live" not in str(info.value) and "Abc123" not in str(info.value)
