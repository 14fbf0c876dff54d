"""Message templates written in the config: Jinja2 in a sandbox, compiled once when the config is
read and checked then against sample leads, rendered per delivery with every value escaped for
where it goes.

Lead text is data, never template: it reaches a template only as the value of a variable, and
whatever `{{ }}` prints is escaped for the destination (`Escape`), so no lead can add markup, a
mention, a header line or a template tag of its own, and an operator cannot forget to escape. The
template's own text is the operator's and is sent as written (that is where a Slack mention or an
HTML tag goes).

Variables: `lead` (the record's fields as the API gave them; the documented ones are always there,
empty when the API left them out), `type`, `event`, `chatbot`, `serial_number`, `webhook_id`,
`created` and `detected` (aware datetimes in the sink's timezone). A digest template gets `leads`
(a list of those) and `count`. The `datetime` filter formats a time.

A sink adopts templates in a few lines: `read_templates(table, [TemplateKey(...)], zone)`
(templatecheck.py) in its `from_table`, then `templates.render(key, delivery)`,
`render_digest(key, deliveries)` or `render_data(key, delivery)` when it sends (a template that
fails for one lead raises PermanentError: a dead letter that says why)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import StrictUndefined, Template, TemplateError, Undefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from .exceptions import PermanentError
from .text import safe_text

if TYPE_CHECKING:
    from .types import Delivery

Escape = Literal["slack", "html", "telegram", "discord", "gchat", "text", "terminal", "data"]
"""How every value a template prints is escaped: `slack` mrkdwn (`& < >` escaped, @channel/@here/
@everyone defused), `html` (Jinja's autoescape), `telegram` (Jinja's autoescape, values cleaned and
`@username` defused), `discord` (markdown backslash-escaped, mentions defused), `gchat` (Google
Chat's formatting characters as lookalikes), `text` (plain text: control characters removed),
`terminal` (one safe line per value), `data` (nothing: a webhook body, serialised afterwards)."""
_AUTOESCAPE = ("html", "telegram")

TIME_FORMAT = "%Y-%m-%d %H:%M %Z"
LEAD_VARIABLES = ("lead", "type", "event", "chatbot", "serial_number", "webhook_id", "created", "detected")
DIGEST_VARIABLES = ("leads", "count")
# the documented record fields a lead may lack: present in `lead` anyway, empty
ABSENT_FIELDS: dict[str, Any] = {"Name": "", "Email": "", "PhoneNumber": "", "Content": "", "URI": "", "Count": None}
_SYNTAX = re.compile(r"\{\{|\{%|\{#")


def is_template(text: str) -> bool:
    """Whether a string holds template syntax at all (`{{`, `{%` or `{#`)."""
    return bool(_SYNTAX.search(text))


@dataclass(frozen=True)
class TemplateKey:
    """A config key that holds a template, and how what it prints is escaped."""

    name: str
    escape: Escape
    digest: bool = False  # rendered with `leads` and `count` instead of one lead's variables
    data: bool = False  # a TOML table or array whose string leaves are templates (a body, Block Kit)


# -- the environments: one per escaping, shared by every sink --------------------------------------
MAX_PRODUCT = 100_000  # characters (or items) `"x" * n` may make: a template is a message, not a bomb
MAX_RANGE = 10_000  # items `range()` may give in a template


MAX_BITS = 100_000  # an integer a template computes: at most about 30,000 digits


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with what makes big values bounded: `"x" * 100000000`,
    `2 ** 64 ** 64`, `s + s` doubling, a `join` or `replace` of gigabytes, `center(10**9)`
    (a template runs synchronously, on the event loop: it must not stall the daemon or fill its
    memory). A loop of `~` is bounded only by `range` (MAX_RANGE): templates are the operator's."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _number(right) and abs(right) > 64:
            raise SecurityError(f"exponent {right!r} is too large for a template")
        if (operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0
                and left.bit_length() * right > MAX_BITS):
            raise SecurityError(f"`**` would make a number of more than {MAX_BITS:,} bits")
        if operator == "*":
            for sized, times in ((left, right), (right, left)):
                if isinstance(sized, str | list | tuple) and _number(times) and len(sized) * times > MAX_PRODUCT:
                    raise SecurityError(f"`*` would make more than {MAX_PRODUCT:,} characters or items")
        if (operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple)
                and len(left) + len(right) > MAX_PRODUCT):
            raise SecurityError(f"`+` would make more than {MAX_PRODUCT:,} characters or items")
        return super().call_binop(context, operator, left, right)


def _bounded_filters(env: Sandbox) -> None:
    """The filters that make big text from small arguments, refused before they do."""
    join, replace, center, indent = (env.filters[name] for name in ("join", "replace", "center", "indent"))

    def too_big(size: int, what: str) -> None:
        if size > MAX_PRODUCT:
            raise SecurityError(f"`{what}` would make more than {MAX_PRODUCT:,} characters")

    @functools.wraps(join)
    def bounded_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value)
        too_big(sum(len(str(item)) for item in items) + len(d) * max(0, len(items) - 1), "join")
        return join(eval_ctx, items, d, attribute)

    @functools.wraps(replace)
    def bounded_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        text, old_text, new_text = str(s), str(old), str(new)
        found = len(text) + 1 if not old_text else text.count(old_text)
        too_big(len(text) + found * max(0, len(new_text) - len(old_text)), "replace")
        return replace(eval_ctx, s, old, new, count)

    def bounded_center(value: Any, width: int = 80) -> Any:
        too_big(width, "center")
        return center(value, width)

    def bounded_indent(s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        too_big(len(str(s)) + (str(s).count("\n") + 1) * (len(width) if isinstance(width, str) else int(width)),
                "indent")
        return indent(s, width, *args, **kwargs)

    env.filters.update(join=bounded_join, replace=bounded_replace, center=bounded_center, indent=bounded_indent)
    env.globals.pop("lipsum", None)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded_range(*args: int) -> range:
    found = range(*args)
    if len(found) > MAX_RANGE:
        raise OverflowError(f"range() of more than {MAX_RANGE:,} items in a template")
    return found


_ENVIRONMENTS: dict[Escape, Sandbox] = {}


def environment(escape: Escape) -> Sandbox:
    env = _ENVIRONMENTS.get(escape)
    if env is None:
        people = escape != "data"  # a body's strings are data: kept exactly, no whitespace control
        env = Sandbox(
            undefined=StrictUndefined, autoescape=escape in _AUTOESCAPE, finalize=_finalizer(escape),
            trim_blocks=people, lstrip_blocks=people, cache_size=0, auto_reload=False)
        env.filters["datetime"] = datetime_filter
        env.globals["range"] = _bounded_range
        _bounded_filters(env)
        del env.filters["safe"]  # nothing a lead wrote may be marked as markup
        _ENVIRONMENTS[escape] = env
    return env


def _escaper(escape: Escape) -> Callable[[str], str]:
    from .sinks.render import mrkdwn, plain  # here: sinks import this module

    if escape == "slack":
        return lambda text: mrkdwn(text, 6 * len(text) + 2)  # escaped, never cut here
    if escape == "text":
        return lambda text: plain(text, len(text) + 1)
    if escape in ("telegram", "discord", "gchat"):
        from .sinks import chatformat

        return {"telegram": chatformat.telegram_value, "discord": chatformat.discord_value,
                "gchat": chatformat.gchat_value}[escape]
    return lambda text: safe_text(text, len(text) + 1)


def _finalizer(escape: Escape) -> Callable[[Any], Any]:
    """What `{{ }}` prints, before Jinja writes it: None is empty, a time is formatted, and (apart
    from html, which Jinja escapes itself, and data) the text is escaped for the destination —
    whatever it is, even a literal in the expression or a filter's output. (telegram: cleaned and
    defused here, HTML-escaped by Jinja after.)"""
    if escape in ("html", "data"):
        def keep(value: Any) -> Any:
            if value is None:
                return ""
            if isinstance(value, datetime):
                return value.isoformat() if escape == "data" else value.strftime(TIME_FORMAT)
            return value
        return keep
    clean = _escaper(escape)
    marked = escape in _AUTOESCAPE  # Jinja escapes what this returns, unless a filter made it Markup

    def escaped(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            value = value.strftime(TIME_FORMAT)
        if marked and isinstance(value, Markup):  # `| e`: escaped once, as in html
            return Markup(clean(str(value)))  # noqa: S704 - escaped by the filter; cleaning adds no markup
        return clean(str(value))  # str() of an undefined variable raises: StrictUndefined
    return escaped


def datetime_filter(value: Any, pattern: str = TIME_FORMAT) -> Any:
    """`{{ created | datetime }}`, `{{ created | datetime("%d.%m.%Y %H:%M") }}`, `datetime("iso")`;
    an ISO 8601 string (lead.CreateTime) is read first. Anything else is left as it is."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return value
    return value.isoformat() if pattern == "iso" else value.strftime(pattern)


# -- variables ------------------------------------------------------------------------------------
def _in_zone(moment: datetime, zone: tzinfo) -> datetime:
    try:
        return moment.astimezone(zone)
    except OverflowError:  # past year 1 or 9999 in that zone: UTC
        return moment


class Record(dict[str, Any]):
    """The record as the API gave it (`{{ lead }}` is exactly that); a documented field it lacks
    reads as empty rather than failing the template."""

    def __missing__(self, key: str) -> Any:
        if key in ABSENT_FIELDS:
            return ABSENT_FIELDS[key]
        raise KeyError(key)


def lead_variables(delivery: Delivery, zone: tzinfo) -> dict[str, Any]:
    lead = delivery.lead
    return {"lead": Record(lead.raw), "type": lead.type, "event": delivery.event_type,
            "chatbot": delivery.chatbot, "serial_number": lead.key.serial_number,
            "webhook_id": delivery.webhook_id, "created": _in_zone(lead.created, zone),
            "detected": _in_zone(delivery.detected_at, zone)}


def digest_variables(deliveries: Sequence[Delivery], zone: tzinfo) -> dict[str, Any]:
    return {"leads": [lead_variables(d, zone) for d in deliveries], "count": len(deliveries)}


# -- compiled templates ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Slot:
    """Where a rendered template goes in a data template's tree (or is the whole of a text one).
    `native`: the string was one `{{ expression }}`, whose value keeps its JSON type (a number stays
    a number, `{{ lead }}` is the whole record)."""

    index: int
    native: bool = False


@dataclass(frozen=True, slots=True)
class Compiled:
    """One config key's templates as one Jinja program, `{% set _0 %}…{% endset %}{% set _1 = … %}`
    (each template's text exactly, whitespace control kept out of the wrapper), and the function
    that builds the result from what the program set. One program and one context per message: a
    body of many strings costs little more than one."""

    key: TemplateKey
    program: Template
    assemble: Callable[[Mapping[str, Any]], Any]


def compile_program(env: ImmutableSandboxedEnvironment, leaves: Sequence[tuple[str, bool]]) -> Template:
    """The program for these (template, is one expression) pairs, in slot order. `lead.Name` is
    compiled as `lead["Name"]` (the same value: a record's fields are never attributes), which
    spares the sandbox a failed attribute lookup per field; `lead.get` and the other dict methods
    stay attribute lookups."""
    source = "".join(f"{{%+ set _{i} = {text} +%}}" if expression else f"{{%+ set _{i} +%}}{text}{{%+ endset +%}}"
                     for i, (text, expression) in enumerate(leaves))
    return env.from_string(_FieldsAsItems().visit(env.parse(source)))


class _FieldsAsItems(NodeTransformer):
    def visit_Getattr(self, node: nodes.Getattr) -> nodes.Node:
        self.generic_visit(node)
        target = node.node
        is_lead = ((isinstance(target, nodes.Name) and target.name == "lead")
                   or (isinstance(target, nodes.Getattr) and target.attr == "lead"))
        if is_lead and not hasattr(dict, node.attr):
            return nodes.Getitem(target, nodes.Const(node.attr), node.ctx, lineno=node.lineno)
        return node


def assembler(tree: Any) -> Callable[[Mapping[str, Any]], Any]:
    """A function from the program's values to the tree with each Slot filled, built once."""
    if isinstance(tree, Slot):
        name = f"_{tree.index}"
        if tree.native:
            return lambda values: native(values[name])
        return lambda values: str(values[name])  # html's Markup is text now
    if isinstance(tree, dict):
        items = [(key, assembler(value)) for key, value in tree.items()]
        return lambda values: {key: part(values) for key, part in items}
    if isinstance(tree, list):
        parts = [assembler(value) for value in tree]
        return lambda values: [part(values) for part in parts]
    return lambda values: tree  # a constant: a string without template syntax, a number, a boolean


def run(compiled: Compiled, variables: Mapping[str, Any]) -> Any:
    program = compiled.program
    env = program.environment
    # Template.new_context, less what a program without blocks or imports never uses
    context = env.context_class(env, {**env.globals, **variables}, program.name, {})
    for _ in program.root_render_func(context):  # the program itself prints nothing
        pass
    return compiled.assemble(context.vars)


def native(value: Any) -> Any:
    """A value for a JSON body: what JSON holds stays, a time is ISO 8601, the rest is text."""
    if type(value) is str:  # the usual case first
        return value
    if isinstance(value, Undefined):
        str(value)  # raises: StrictUndefined
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)  # a Markup from a filter is text
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): native(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [native(v) for v in value]
    return str(value)


class MessageTemplates(dict[str, Any]):
    """One sink's templates. As a dict it holds each key's source as the config wrote it (what
    `check` shows, and what makes two configs equal); the compiled templates are kept beside."""

    def __init__(self, sources: Mapping[str, Any] | None = None, compiled: Mapping[str, Compiled] | None = None,
                 zone: tzinfo = UTC) -> None:
        super().__init__(sources or {})
        self._compiled = dict(compiled or {})
        self.zone = zone

    def has(self, key: str) -> bool:
        return key in self._compiled

    def render(self, key: str, delivery: Delivery) -> str:
        return str(self._render(key, lead_variables(delivery, self.zone)))

    def render_digest(self, key: str, deliveries: Sequence[Delivery]) -> str:
        return str(self._render(key, digest_variables(deliveries, self.zone)))

    def render_data(self, key: str, delivery: Delivery) -> Any:
        """A data template (a table or array) with every string leaf rendered."""
        return self._render(key, lead_variables(delivery, self.zone))

    def _render(self, key: str, variables: Mapping[str, Any]) -> Any:
        try:
            return run(self._compiled[key], variables)
        except Exception as exc:  # the operator's template, on a lead unlike the sample
            raise PermanentError(f"template {key} failed for this lead: {describe(exc)}"
                                 " (fix it, reload, then `outbox retry`)") from None


def describe(exc: BaseException) -> str:
    """Why a template failed, in one short line (Jinja's messages name variables, not values)."""
    message = exc.message if isinstance(exc, TemplateError) else None
    return safe_text(message or f"{type(exc).__name__}: {exc}", 200)
