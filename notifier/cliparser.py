"""The command line's grammar: every command, option, default and exit status, and the rules
that make a mistake name itself (an unknown option is blamed with a suggestion, a bad number
with its range). `cli.py` runs what this parses."""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import NoReturn

from ._version import __version__
from .state import INT64
from .types import EVENT_KINDS

PROG = "smarterbot-notifier"
USAGE_EXIT = "2 usage or config error"
SHELLS = ("bash", "zsh", "fish")
_NUMBER = re.compile(r"^-\d+(\.\d*)?$|^-\.\d+$")
_EXITS = re.compile(r", (?=\d+ )")  # "0 done, 1 failed, 2 …": one line per exit status in --help


class BadUsage(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """Reports a usage error to `main` instead of exiting, so `main` can blame the right word."""

    def error(self, message: str) -> NoReturn:
        raise BadUsage(self, message)


# --- option values: every number the state or the clock cannot hold is refused here --------
def _int(low: int, high: int = INT64[1]) -> Callable[[str], int]:
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: {low} to {high}")
        return value
    return whole


def _float(low: float, high: float) -> Callable[[str], float]:
    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: {low:g} to {high:g}")
        return value
    return number


def _since(value: str) -> datetime:
    from .ledger import parse_since
    try:
        return parse_since(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_ID, _SESSION, _LIMIT = _int(1), _int(*INT64), _int(1, 10_000_000)
_SECONDS = _float(0.01, 10_000_000)

# --- the parser ------------------------------------------------------------------------------
CONFIG_HELP = "the config file (default: $SMARTERBOT_NOTIFIER_CONFIG, else ./config.toml)"


def _options(*, config: bool, top: bool = False) -> _Parser:
    """--config and --log-*, accepted before the command (`top`) and after it and its action:
    below the top their default is SUPPRESS, so a value given earlier is not reset."""
    keep = argparse.SUPPRESS
    options = _Parser(add_help=False)
    if config:
        options.add_argument("--config", metavar="PATH", default=None if top else keep, help=CONFIG_HELP)
    options.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                         default="info" if top else keep, help="the least severe log records shown (default: info)")
    options.add_argument("--log-format", choices=["text", "json"], default=None if top else keep,
                         help="logs on stderr (default: text on a terminal, else JSON lines)")
    return options


def build_parser() -> _Parser:
    parser = _Parser(prog=PROG, parents=[_options(config=True, top=True)], allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Watch SmarterBot chatbots for new leads and appointments and notify webhooks, "
                                 "Slack, email or the console.",
                     epilog="Without a command: this help (exit 2). `%(prog)s COMMAND --help` shows a command's "
                            "options.\nExit status: 0 done, 1 failed (the message says what), 2 usage or config "
                            "error, 130 interrupted.\nShell completion: `%(prog)s completion bash|zsh|fish`.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    with_config, logging_only = [_options(config=True)], [_options(config=False)]

    def command(where: argparse._SubParsersAction[_Parser], name: str, summary: str, exits: str,
                parents: list[_Parser] = with_config, usage: str | None = None) -> _Parser:
        return where.add_parser(name, parents=parents, help=summary, description=summary[0].upper() + summary[1:],
                                epilog="exit status:\n" + "\n".join(f"  {each}" for each in _EXITS.split(exits)),
                                allow_abbrev=False, usage=usage,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    command(sub, "run", "the daemon: poll every chatbot on its interval and deliver until SIGTERM/SIGINT",
            f"0 stopped by SIGTERM/SIGINT, 1 the state cannot be used or the daemon could not recover, {USAGE_EXIT}")
    once = command(sub, "once", "poll every chatbot once, deliver what is due, exit (for cron and timers)",
                   f"0 every poll succeeded, 1 a poll failed (each is named; with --strict: or a delivery "
                   f"attempt failed), {USAGE_EXIT}, 130 interrupted")
    once.add_argument("--strict", action="store_true",
                      help="also exit 1 when any delivery attempt failed (default: only failed polls do)")
    check = command(sub, "check", "validate the config (every problem at once, with its line) and the state "
                    "location, and print what it understood", f"0 valid, {USAGE_EXIT}")
    check.add_argument("--json", action="store_true",
                       help='one JSON document: what was understood, or {"ok": false, "problems": [...]}')
    test_sink = command(sub, "test-sink", "send one sample lead (or --session ID: a real one; --event KIND: a sample "
                        "event) through sink NAME now, rendered with its templates (its `types` filter and active "
                        "hours do not apply), and show what was sent",
                        f"0 the sink accepted it, 1 it did not (why), or no such lead, {USAGE_EXIT}")
    test_sink.add_argument("name", metavar="NAME", help="the sink's name, as in [sinks.NAME]")
    sample = test_sink.add_mutually_exclusive_group()
    sample.add_argument("--session", type=_SESSION, metavar="ID",
                        help="send the lead with this SessionID from the state instead of a sample one")
    sample.add_argument("--event", choices=EVENT_KINDS, metavar="KIND",
                        help=f"send a sample operational event instead of a lead: {', '.join(EVENT_KINDS)}")
    demo = command(sub, "demo", "see it work: simulator + daemon + console sink, no config, no network",
                   f"0 stopped, {USAGE_EXIT}", parents=logging_only)
    demo.add_argument("--duration", type=_SECONDS, metavar="SECONDS", help="stop after this long (default: Ctrl-C)")
    demo.add_argument("--every", type=_SECONDS, default=3.0, metavar="SECONDS",
                      help="a new lead this often (default: 3)")
    status = command(sub, "status", "chatbots (last poll, result, new leads today) and sinks (pending, held, "
                     "dead), beside a running daemon or not", f"0 shown, 1 the state cannot be read, {USAGE_EXIT}")
    status.add_argument("--json", action="store_true", help="one JSON document (default: tables)")

    outbox = command(sub, "outbox", "list, retry or purge deliveries", f"see each action's --help, {USAGE_EXIT}")
    actions = outbox.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
    listing = command(actions, "list", "pending (or --dead, or --held) deliveries, oldest first, with their "
                      "attempts and last error", f"0 listed, 1 the state cannot be read, {USAGE_EXIT}")
    _parked(listing, required=False, what="{} deliveries instead of pending ones")
    listing.add_argument("--sink", metavar="NAME", help="only this sink's (default: every sink's)")
    listing.add_argument("--limit", type=_LIMIT, default=1000, metavar="N", help="at most N (default: 1000)")
    listing.add_argument("--json", action="store_true", help="one JSON document (default: a table)")
    retry = command(actions, "retry", "make deliveries due now with a fresh attempt budget: IDs, every --dead or "
                    "--held one, or with only --sink NAME that sink's pending ones; a running daemon sends them "
                    "within 5 s", f"0 done, 1 an ID was not found, already delivered or of another sink (each is "
                    f"named; the others are due again), {USAGE_EXIT}")
    retry.add_argument("ids", nargs="*", type=_ID, metavar="ID", help="delivery IDs, as `outbox list` shows them")
    _parked(retry, required=False, what="every {} delivery (of --sink)")
    retry.add_argument("--sink", metavar="NAME", help="only this sink's (default: every sink's)")
    purge = command(actions, "purge", "drop dead letters or held deliveries (their leads stay seen: nothing is "
                    "notified again)", f"0 done, 1 the state cannot be changed, {USAGE_EXIT}")
    _parked(purge, required=True, what="drop {} deliveries")
    purge.add_argument("--older-than", type=_float(0, 36_500), metavar="DAYS",
                       help="only those last changed more than DAYS days ago (default: all of them)")
    purge.add_argument("--sink", metavar="NAME", help="only this sink's (default: every sink's)")

    leads = command(sub, "leads", "recent leads, newest first, with each sink's state; `leads show SESSIONID` "
                    "tells one lead's whole story", f"0 shown, 1 no such lead (show), {USAGE_EXIT}",
                    usage="%(prog)s [--chatbot NAME] [--since DATE] [--session ID] [--webhook-id ID] [--limit N] "
                          "[--json]\n       %(prog)s show (SESSIONID | --webhook-id ID) [--json]")
    leads.add_argument("action", nargs="?", metavar="show", help="show one lead's whole story")
    leads.add_argument("session_id", nargs="?", type=_SESSION, metavar="SESSIONID", help="the lead's SessionID")
    leads.add_argument("--chatbot", metavar="NAME", help="only this chatbot's: name or serial (default: all)")
    leads.add_argument("--since", type=_since, metavar="DATE",
                       help="CreateTime from: YYYY-MM-DD, an ISO 8601 time (UTC), or an age: 7d, 12h, 30m "
                            "(default: all kept)")
    leads.add_argument("--session", type=_SESSION, metavar="ID", help="only this SessionID (default: any)")
    leads.add_argument("--webhook-id", metavar="ID", help="only the lead sent with this webhook-id (default: any)")
    leads.add_argument("--limit", type=_LIMIT, default=50, metavar="N", help="at most N, the newest (default: 50)")
    leads.add_argument("--json", action="store_true", help="one JSON document (default: a table)")

    replay = command(sub, "replay", "send already-notified leads to a sink again, with their original webhook-id",
                     f"0 queued (and sent, with no daemon running), 1 no such lead or the state cannot be "
                     f"changed, {USAGE_EXIT}")
    replay.add_argument("--sink", required=True, metavar="NAME", help="the sink to send them to (required)")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", type=_SESSION, metavar="ID", help="the lead with this SessionID")
    which.add_argument("--since", type=_since, metavar="DATE",
                       help="leads created from: YYYY-MM-DD, an ISO 8601 time (UTC), or an age: 7d, 12h, 30m")
    replay.add_argument("--chatbot", metavar="NAME", help="only this chatbot's leads (default: all)")
    replay.add_argument("--dry-run", action="store_true", help="list what would be sent, change nothing")

    state = command(sub, "state", "state maintenance", f"see each action's --help, {USAGE_EXIT}")
    actions = state.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
    forget = command(actions, "forget",
                     "drop a chatbot's seen leads so its next poll is a first run (`first_run` applies)",
                     f"0 done or declined, 1 the state cannot be changed, {USAGE_EXIT}")
    forget.add_argument("chatbot", metavar="CHATBOT", help="a chatbot's name or serial number")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation (default: ask on a terminal)")
    forget.add_argument("--dry-run", action="store_true", help="only say how many seen leads would be forgotten")
    migrate = command(actions, "migrate", "copy the SQLite state ([state] path: seen leads, coverage, pending, held "
                      "and dead deliveries, the ledger) into an empty PostgreSQL database, in one transaction; "
                      "then set [state] url to it", f"0 copied, 1 the source or the target cannot be used "
                      f"(nothing was copied), {USAGE_EXIT}")
    target = migrate.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="URL", help="postgresql://user:password@host:5432/database (visible to other "
                        "users in the process list: --to-file keeps the password out of it)")
    target.add_argument("--to-file", metavar="PATH", help="a file holding the URL (e.g. a Docker secret)")

    sim = command(sub, "simulate", "serve the built-in LeadList API simulator alone, creating leads, and print a "
                  "config to try against it", f"0 stopped, 1 cannot listen on --host/--port, {USAGE_EXIT}",
                  parents=logging_only)
    sim.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    sim.add_argument("--port", type=_int(0, 65_535), default=8765, help="the port to listen on (default: 8765)")
    sim.add_argument("--api-key", default="sim-key", help="the API key it accepts (default: sim-key)")
    sim.add_argument("--chatbots", type=_int(1, 10_000), default=2, metavar="N", help="how many (default: 2)")
    sim.add_argument("--every", type=_SECONDS, default=5.0, metavar="SECONDS",
                     help="a new lead this often (default: 5)")
    sim.add_argument("--duration", type=_SECONDS, metavar="SECONDS", help="stop after this long (default: Ctrl-C)")

    completion = command(sub, "completion", "print the shell completion script for SHELL, generated from these "
                         "commands and options (how to install it: see the README)", f"0 printed, {USAGE_EXIT}",
                         parents=[])
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    return parser


def _parked(parser: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--dead", dest="parked", action="store_const", const="dead", help=what.format("dead"))
    group.add_argument("--held", dest="parked", action="store_const", const="held",
                       help=what.format("held") + ", held by the flood guard or waiting for the sink's "
                       "active hours (`outbox list --held` shows which: its LAST ERROR says why)")


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every command and action parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from walk(child)


def unknown_option(root: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.ArgumentParser, str]:
    """The first option in `argv` that no parser on the command's path knows, with the parser
    to blame it on; argparse alone would blame its value (`leads --sinse 7d`: "invalid choice: '7d'")."""
    current, known = root, dict(root._option_string_actions)
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--":
            break
        elif word.startswith("-") and word != "-" and not _NUMBER.match(word):
            action = known.get(word.split("=", 1)[0])
            if action is None:
                options = [o for o in current._option_string_actions if o.startswith("--") and o != "--help"]
                close = difflib.get_close_matches(word.split("=", 1)[0], options)
                return current, f"unknown option {word.split('=', 1)[0]}" + (
                    f" (did you mean {close[0]}?)" if close else "")
            skip = action.nargs != 0 and "=" not in word
        else:
            for action in current._actions:
                if isinstance(action, argparse._SubParsersAction) and word in action.choices:
                    current = action.choices[word]  # after a command, only its own options count
                    known = dict(current._option_string_actions)
    return current, ""
