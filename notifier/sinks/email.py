"""Email through aiosmtplib: one readable multipart message per lead (text and HTML), Reply-To
set to the lead so a salesperson answers with one click. Envelope recipients are always the
configured ones, and no lead text can reach a header with a line break or an RFC 2047 encoded
word in it (the email package would decode the word, line breaks and all). The operator's
templates (`subject`, `text_body`, `html_body` and their digest equivalents) replace the default
parts they name; in `html_body` every lead value is HTML-escaped. An operational event (events.py)
is always the default event mail (subject `[SmarterBot] <title>`): lead templates never see it."""

from __future__ import annotations

import html
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import aiosmtplib
import structlog

from ..exceptions import PermanentError, RetryableError
from ..templatecheck import read_templates
from ..templates import MessageTemplates, TemplateKey, is_template
from ..text import safe_text
from ..types import Delivery
from .base import SinkBase, SinkConfig, SinkContext
from .chatformat import event_text
from .render import header_text, label, load_timezone, local_time, one_line, plain, valid_email

if TYPE_CHECKING:
    from ..tomlsource import Table

Security = Literal["starttls", "tls", "none"]
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
CONTENT_LIMIT = 50_000
log = structlog.get_logger("notifier.sinks.email")
TEMPLATES = (TemplateKey("text_body", "text"), TemplateKey("html_body", "html"),
             TemplateKey("digest_subject", "text", digest=True), TemplateKey("digest_text", "text", digest=True),
             TemplateKey("digest_html", "html", digest=True))
SUBJECT = TemplateKey("subject", "text")  # a template when it holds {{ }}; else the prefix it always was


@dataclass(frozen=True, kw_only=True)
class EmailConfig(SinkConfig):
    human = True
    host: str
    port: int
    security: Security = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str
    to: tuple[str, ...]
    subject: str = "[SmarterBot]"
    timezone: str = "UTC"
    timeout: float = 30.0
    ca_file: str | None = None
    templates: MessageTemplates = field(default_factory=MessageTemplates)

    @classmethod
    def from_table(cls, name: str, table: Table) -> EmailConfig:
        security = table.text("security", "starttls", choices=("starttls", "tls", "none"))
        username = table.text("username", None)
        password = table.secret("password")
        if (username is None) != (password is None) and not table.failed("username", "password", "password_file"):
            table.report("password" if username else "username",
                         "username and password (or password_file) go together")
        sender = table.text("from")
        if sender and (not valid_email(parseaddr(sender)[1]) or any(c in sender for c in "\r\n")):
            table.report("from", f"{sender!r} is not an email address")
        to = table.text_list("to")
        for address in to:
            if not valid_email(address):
                table.report("to", f"{address!r} is not an email address")
                break
        zone = table.text("timezone", "UTC")
        try:
            load_timezone(zone)
        except ValueError as exc:
            table.report("timezone", str(exc))
        ca_file = table.text("ca_file", None)
        if ca_file is not None:
            problem = _ca_problem(ca_file)
            if problem is not None:
                table.report("ca_file", problem)
        subject = table.data.get("subject")
        templated = isinstance(subject, str) and is_template(subject)
        templates = read_templates(table, [*TEMPLATES, *([SUBJECT] if templated else [])], zone)
        prefix = "" if templated else one_line(table.text("subject", "[SmarterBot]", allow_empty=True), 100)
        return cls(**cls.common(name, table), host=table.text("host"),
                   port=table.number("port", DEFAULT_PORTS[security], minimum=1, maximum=65535, integer=True),
                   security=security, username=username, password=password, sender=sender, to=to,
                   subject=prefix, timezone=zone, timeout=table.number("timeout", 30.0, minimum=1, maximum=600),
                   ca_file=ca_file, digest_after=cls.digest_setting(table), templates=templates)


def _ca_problem(ca_file: str) -> str | None:
    """Whether `ca_file` makes a TLS context, checked when the config is read: a file that is not
    PEM, or not readable, is a config error on its key rather than a traceback at the first send."""
    if not Path(ca_file).is_file():
        return f"{ca_file} is not a readable file"
    try:
        ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"{ca_file} holds no usable CA certificate ({safe_text(str(exc), 120)})"
    return None


def _lead_lines(delivery: Delivery, zone: tzinfo) -> list[tuple[str, str]]:
    lead = delivery.lead
    return [("Type", lead.type), ("Name", one_line(lead.name, 300)), ("Email", one_line(lead.email, 300)),
            ("Phone", one_line(lead.phone, 100)), ("Page", one_line(lead.uri, 500)),
            ("Chatbot", one_line(delivery.chatbot, 200)), ("Created", local_time(delivery, zone)),
            ("SessionID", str(lead.key.session_id))]


def _event_parts(delivery: Delivery) -> tuple[str, str, str]:
    """The subject, text and HTML of an operational event. Its title and values are one clean line
    each (`event_text`), HTML-escaped in the HTML part: the vendor's Message is a stranger's text."""
    event = event_text(delivery)
    rows = [*event.lines, ("Event", event.footer)]
    text = event.title + "\n\n" + "\n".join(f"{k}: {v}" for k, v in rows) + "\n"
    body = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return event.title, text, f"<html><body><h2>{html.escape(event.title)}</h2><table>{body}</table></body></html>"


def _summary_line(delivery: Delivery, zone: tzinfo) -> str:
    if delivery.event:  # events are sent alone; should one be here, it is a line of its own
        return event_text(delivery).title
    return " · ".join(v for _, v in _lead_lines(delivery, zone)[:4])


def build_message(config: EmailConfig, deliveries: Sequence[Delivery], zone: tzinfo,
                  now_header: str) -> EmailMessage:
    """One lead, or a digest of several. Every header value is one sanitized line. From, To and the
    subject prefix come from the config (checked there); lead text reaches two headers: Subject,
    through `header_text` (no line breaks, no encoded words), and Reply-To, only when the address
    passes `valid_email` (which refuses encoded words and anything parsed back differently)."""
    templates = config.templates
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Date"] = now_header
    first = deliveries[0]
    domain = parseaddr(config.sender)[1].rpartition("@")[2] or "smarterbot-notifier"
    if len(deliveries) == 1 and first.event:
        title, text, html_body = _event_parts(first)
        subject = f"{config.subject or '[SmarterBot]'} {header_text(title, 300)}"
        message["Message-ID"] = f"<{first.webhook_id}@{domain}>"  # the same on every retry
        rendered: dict[str, str] = {}  # lead templates would print nonsense for an event
    elif len(deliveries) == 1:
        lead = first.lead
        who = header_text(lead.name, 80) or header_text(lead.email, 80) or "someone"
        subject = f"{label(first)}: {who} via {header_text(first.chatbot, 60)}"
        message["Message-ID"] = f"<{first.webhook_id}@{domain}>"  # the same on every retry
        if valid_email(lead.email):
            message["Reply-To"] = lead.email
        rows = _lead_lines(first, zone)
        content = plain(lead.content, CONTENT_LIMIT)
        text = "\n".join(f"{k}: {v}" for k, v in rows) + f"\n\nMessage:\n{content}\n"
        body = "".join(f"<tr><th align='left'>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        html_body = (f"<html><body><h2>{html.escape(label(first))}</h2><table>{body}</table>"
                     f"<h3>Message</h3><pre style='white-space:pre-wrap'>{html.escape(content)}</pre></body></html>")
        subject = f"{config.subject} {subject}"
        parts = ("subject", "text_body", "html_body")
        rendered = {key: templates.render(key, first) for key in parts if templates.has(key)}
    else:
        subject = f"{len(deliveries)} new leads and appointments"
        items = [_summary_line(d, zone) for d in deliveries]
        text = subject + ":\n\n" + "\n".join(f"- {item}" for item in items) + "\n"
        html_body = (f"<html><body><h2>{html.escape(subject)}</h2><ul>"
                     + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul></body></html>")
        subject = f"{config.subject} {subject}"
        digest = {"digest_subject": "subject", "digest_text": "text_body", "digest_html": "html_body"}
        rendered = {part: templates.render_digest(key, deliveries) for key, part in digest.items()
                    if templates.has(key) and not any(d.event for d in deliveries)}
    subject = rendered.get("subject", subject)
    if "text_body" in rendered:  # the operator's text: the default HTML would tell another story
        text, html_body = rendered["text_body"], rendered.get("html_body", "")
    else:
        html_body = rendered.get("html_body", html_body)
    # the whole value once more: pieces put side by side must not spell an encoded word either
    message["Subject"] = header_text(subject.strip(), 400)
    message.set_content(text)
    if html_body:
        message.add_alternative(html_body, subtype="html")
    return message


class EmailSink(SinkBase):
    def __init__(self, config: EmailConfig, context: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.clock = context.clock
        self.zone = load_timezone(config.timezone)
        self._tls: ssl.SSLContext | None = None
        if config.ca_file:
            self._tls = ssl.create_default_context(cafile=config.ca_file)

    def message(self, deliveries: Sequence[Delivery]) -> EmailMessage:
        return build_message(self.config, deliveries, self.zone, format_datetime(self.clock()))

    def render(self, delivery: Delivery) -> str:
        return self.message([delivery]).as_string()

    async def send(self, delivery: Delivery) -> str | None:
        return await self._send(self.message([delivery]))

    async def send_digest(self, deliveries: Sequence[Delivery]) -> str | None:
        return await self._send(self.message(deliveries))

    async def _send(self, message: EmailMessage) -> str:
        """Returns the server's final reply (e.g. "250 2.0.0 queued as 4F2A"), for the ledger."""
        config = self.config
        where = f"SMTP {config.host}:{config.port}"
        try:
            errors, reply = await aiosmtplib.send(
                message, sender=parseaddr(config.sender)[1], recipients=list(config.to),
                hostname=config.host, port=config.port, username=config.username, password=config.password,
                use_tls=config.security == "tls", start_tls=config.security == "starttls",
                validate_certs=True, tls_context=self._tls, timeout=config.timeout)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            reason = f"{where} refused every recipient: " + "; ".join(
                f"{r.recipient}: {r.code} {safe_text(r.message, 100)}" for r in exc.recipients)
            if all(500 <= c < 600 for c in codes):
                raise PermanentError(reason, status=codes[0]) from None
            raise RetryableError(reason, status=codes[0] if codes else None) from None
        except aiosmtplib.SMTPResponseException as exc:
            reason = f"{where} answered {exc.code}: {safe_text(exc.message, 200)}"
            if 500 <= exc.code < 600:
                raise PermanentError(reason, status=exc.code) from None
            raise RetryableError(reason, status=exc.code) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise PermanentError(f"{where}: {safe_text(str(exc))} (check security)") from None
        except aiosmtplib.SMTPException as exc:
            if "STARTTLS" in str(exc) and "not supported" in str(exc):  # never fall back to clear text
                raise PermanentError(f"{where}: the server offers no STARTTLS; security = \"starttls\" "
                                     "refuses to send in clear (use \"tls\", or \"none\" knowingly)") from None
            raise RetryableError(f"{where}: {type(exc).__name__}: {safe_text(str(exc))}") from None
        except (OSError, TimeoutError) as exc:
            raise RetryableError(f"{where}: {type(exc).__name__}: {safe_text(str(exc))}") from None
        if errors:  # some recipients took it: retrying would send them a duplicate
            log.warning(
                "some recipients refused the mail", sink=self.name,
                refused={k: f"{v.code} {safe_text(v.message, 100)}" for k, v in errors.items()})
        refused = f" ({len(errors)} recipients refused)" if errors else ""
        return safe_text(str(reply), 180) + refused
