"""Reading a sink's templates from the config: each one compiled once, checked for unknown
variables and lead fields, and rendered against sample leads (a Lead and an Appointment), so a
syntax error, a typo or a failure is a config error with its key and line — in `check`, at
start, and on SIGHUP (where the old config keeps running) — never a surprise at the first lead.

    templates = read_templates(table, [TemplateKey("text", "slack"), ...], zone)

`${VAR}` works in templates as in every config string, and what it brings in is treated as a
secret (scrubbed from logs and command output): a webhook body often carries an API key."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from jinja2 import TemplateSyntaxError, meta, nodes

from .templates import (
    ABSENT_FIELDS,
    DIGEST_VARIABLES,
    LEAD_VARIABLES,
    Compiled,
    MessageTemplates,
    Slot,
    TemplateKey,
    assembler,
    compile_program,
    describe,
    digest_variables,
    environment,
    is_template,
    lead_variables,
    native,
    run,
)
from .tomlsource import suggestion

if TYPE_CHECKING:
    from .tomlsource import Table
    from .types import Delivery

_ONE_EXPRESSION = re.compile(r"\s*\{\{((?:(?!\{\{|\}\}|\{%|\{#).)*)\}\}\s*", re.DOTALL)
_ENV = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${VAR} and $${VAR}, as tomlsource reads them
_TAGS = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)  # a template's expressions and statements


def read_templates(table: Table, keys: Sequence[TemplateKey], timezone: str = "UTC") -> MessageTemplates:
    """The templates among `keys` that `table` sets, each compiled and checked now; every key is
    checked, so one load names every problem. A key with a problem is left out (and reported)."""
    try:
        zone: tzinfo = ZoneInfo(timezone)
    except (ValueError, KeyError):  # reported by the sink's own timezone check
        zone = UTC
    sources: dict[str, Any] = {}
    compiled: dict[str, Compiled] = {}
    for key in keys:
        value = table.raw(key.name)
        if value is None:
            continue
        reader = _Reader(table, key, zone)
        tree = reader.read(value)
        program = reader.program(tree)
        if program is not None:
            sources[key.name] = value
            compiled[key.name] = program
    return MessageTemplates(sources, compiled, zone)


class _Reader:
    """Compiles one config key's template (or a data template's every leaf) and checks each."""

    def __init__(self, table: Table, key: TemplateKey, zone: tzinfo) -> None:
        self.table = table
        self.key = key
        self.env = environment(key.escape)
        self.failed = False
        self.leaves: list[tuple[str, bool]] = []  # each template's source, and whether it is one expression
        samples = _samples()
        self.variables = ([digest_variables(samples, zone)] if key.digest
                          else [lead_variables(sample, zone) for sample in samples])
        self.allowed = set(DIGEST_VARIABLES if key.digest else LEAD_VARIABLES) | set(self.env.globals)

    def read(self, value: Any) -> Any:
        if self.key.data:
            if not isinstance(value, dict | list):
                self._report((), "must be a table or an array (whose strings are templates)")
                return None
            return self._leaf(value, ())
        if not isinstance(value, str):
            self._report((), "must be a string (a template)")
            return None
        return self._template(self._expand((), value, literal=True), ())

    def program(self, tree: Any) -> Compiled | None:
        """Every checked template of this key as one program (see `Compiled`), run once more with
        the samples as it will run for leads."""
        if self.failed or tree is None:
            return None
        try:
            compiled = Compiled(self.key, compile_program(self.env, self.leaves), assembler(tree))
            for variables in self.variables:
                run(compiled, variables)
        except Exception as exc:  # only a template that ends the program's own tags early: `{% endset %}`
            self._report((), f"cannot be used: {describe(exc)}")
            return None
        return compiled

    def _report(self, path: tuple[str | int, ...], message: str) -> None:
        for secret in self.table.secrets:  # a parser quoting what ${VAR} brought in is told nothing of it
            if len(secret) >= 6:  # (a one-letter test key would mask every "k" of the message)
                message = message.replace(secret, "***")
        self.failed = True
        where = (*self.table.path, self.key.name, *path)
        self.table.child({}, where[:-1]).report(where[-1], message)

    def _expand(self, path: tuple[str | int, ...], value: str, *, literal: bool = False) -> str:
        """${VAR} from the environment, as in every config string; what it brings in is treated as a
        secret (scrubbed from logs and command output): a body often carries an API key. In a
        template (`literal`) it goes in as a string literal, never as template source: a password
        holding `{{` or `{#` is sent as written, and never quoted by a syntax error."""
        tags = [m.span() for m in _TAGS.finditer(value)] if literal else []

        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return "${" + match.group(2) + "}"
            name = match.group(2)
            if any(start <= match.start() < end for start, end in tags):
                self._report(path, f"${{{name}}} inside {{{{ }}}} or {{% %}}: write it outside them (it is text, "
                                   "not template)")
                return match.group(0)
            if name not in self.table.env:
                self._report(path, f"environment variable {name} is not set")
                return match.group(0)
            secret = self.table.env[name]
            self.table.secrets.append(secret)
            return "{{ " + json.dumps(secret, ensure_ascii=False) + " }}" if literal else secret
        return _ENV.sub(replace, value)

    def _leaf(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, dict):
            return {key: self._leaf(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self._leaf(item, (*path, i)) for i, item in enumerate(value)]
        if isinstance(value, bool | int | float):
            return value
        if not isinstance(value, str):
            self._report(path, "is a TOML date or time, which JSON has not: write it as a string")
            return None
        if not is_template(value):  # judged before ${VAR} comes in: a secret never makes a leaf a template
            return self._expand(path, value)
        text = self._expand(path, value, literal=True)
        if self.key.escape == "data" and (one := _ONE_EXPRESSION.fullmatch(text)):
            return self._expression(one.group(1), text, path)
        return self._template(text, path)

    def _slot(self, source: str, expression: bool) -> Slot:
        self.leaves.append((source, expression))
        return Slot(len(self.leaves) - 1, native=expression)

    def _template(self, source: str, path: tuple[str | int, ...]) -> Slot | None:
        try:
            template = self.env.from_string(source)
        except TemplateSyntaxError as exc:
            self._report(path, f"template syntax error{_line(exc.lineno, source)}: {exc.message}")
            return None
        if self._static_problem(source, path):
            return None
        try:
            for variables in self.variables:
                template.render(variables)
        except Exception as exc:  # the operator's template, run on the sample leads
            self._report(path, f"fails with the sample lead{_line(_template_line(exc), source)}: "
                               f"{describe(exc)}")
            return None
        return self._slot(source, expression=False)

    def _expression(self, expression: str, source: str, path: tuple[str | int, ...]) -> Slot | None:
        try:
            template = self.env.from_string("{% set result = " + expression + " %}")
        except TemplateSyntaxError as exc:
            self._report(path, f"template syntax error: {exc.message}")
            return None
        if self._static_problem(source, path):
            return None
        try:
            for variables in self.variables:
                native(getattr(template.make_module(variables), "result"))  # noqa: B009 - set by the template
        except Exception as exc:  # the operator's expression, run on the sample leads
            self._report(path, f"fails with the sample lead: {describe(exc)}")
            return None
        return self._slot(expression, expression=True)

    def _static_problem(self, source: str, path: tuple[str | int, ...]) -> bool:
        """Unknown variables, and unknown lead fields written `lead.Field`, anywhere in the template
        (also in a branch the samples do not take)."""
        ast = self.env.parse(source)
        if next(ast.find_all(nodes.EvalContextModifier), None) is not None:  # also the scoped one
            self._report(path, "`{% autoescape %}` is not allowed: every value is escaped for where it goes, "
                               "and nothing a lead wrote may become markup")
            return True
        for name in sorted(meta.find_undeclared_variables(ast) - self.allowed):
            close = suggestion(name, self.allowed - set(self.env.globals))
            known = ", ".join(DIGEST_VARIABLES if self.key.digest else LEAD_VARIABLES)
            self._report(path, f"unknown variable {name!r}" + (f" (did you mean {close!r}?)" if close else "")
                         + f"; {'a digest template' if self.key.digest else 'a template'} knows {known}")
            return True
        fields = {*ABSENT_FIELDS, *(self.variables[0]["leads"][0] if self.key.digest else self.variables[0])["lead"]}
        for node in ast.find_all(nodes.Getattr):
            target = node.node
            is_lead = ((isinstance(target, nodes.Name) and target.name == "lead")
                       or (isinstance(target, nodes.Getattr) and target.attr == "lead"))
            if is_lead and node.attr not in fields and not hasattr(dict, node.attr):
                close = suggestion(node.attr, fields)
                self._report(path, f"lead has no field {node.attr!r}{_line(node.lineno, source)}"
                             + (f" (did you mean {close!r}?)" if close else "")
                             + f"; a field beyond the documented ones: lead.get({node.attr!r})")
                return True
        return False


def _samples() -> list[Delivery]:
    """A Lead and an Appointment, as `test-sink` sends them."""
    from .sample import sample_deliveries  # here: the sample imports the sinks, which import this module

    return sample_deliveries()


def _line(line: int | None, source: str) -> str:
    return f" on line {line} of the template" if line and "\n" in source.strip() else ""


def _template_line(exc: BaseException) -> int | None:
    """The template line a rendering failed on: Jinja rewrites its traceback so a frame of the
    template's own code carries it."""
    line = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line

