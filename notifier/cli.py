"""The command line. Anything an operator can get wrong ends in one clear line on stderr and an
exit code, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import datetime

from . import logs
from ._version import __version__
from .config import Config, config_path, load_config
from .exceptions import ConfigError, NotifierError
from .text import safe_text, scrubbed

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help="config file (default: $SMARTERBOT_NOTIFIER_CONFIG, else ./config.toml)")
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-format", choices=["text", "json"],
                        help="text on a terminal, JSON lines otherwise")
    parser = argparse.ArgumentParser(prog="smarterbot-notifier",
                                     description="Notify Slack, email and webhooks of new SmarterBot leads.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon")
    sub.add_parser("once", parents=[common], help="poll every chatbot once, deliver what is due, exit")
    sub.add_parser("check", parents=[common], help="validate the config and exit")
    demo = sub.add_parser("demo", parents=[common], help="see it work: simulator + console, no config")
    demo.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    demo.add_argument("--every", type=float, default=3.0, metavar="SECONDS", help="a new lead this often")
    test_sink = sub.add_parser("test-sink", parents=[common], help="send one sample lead through a sink")
    test_sink.add_argument("name", help="the sink's name, as in [sinks.NAME]")
    status = sub.add_parser("status", parents=[common], help="chatbots and sinks at a glance")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    outbox = sub.add_parser("outbox", help="list, retry or purge deliveries").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    listing = outbox.add_parser("list", parents=[common], help="pending (or --held, --dead) deliveries")
    _parked(listing, required=False)
    listing.add_argument("--sink", metavar="NAME")
    listing.add_argument("--json", action="store_true")
    retry = outbox.add_parser("retry", parents=[common], help="make deliveries due again (releases held ones)")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    _parked(retry, required=False, what="every {} delivery (of --sink)")
    retry.add_argument("--sink", metavar="NAME")
    purge = outbox.add_parser("purge", parents=[common], help="drop dead letters or held deliveries")
    _parked(purge, required=True)
    purge.add_argument("--older-than", type=float, metavar="DAYS")
    purge.add_argument("--sink", metavar="NAME")
    leads = sub.add_parser("leads", parents=[common], help="recent leads and who was told; `leads show SESSIONID`",
                           usage="%(prog)s [--chatbot NAME] [--since DATE] [--session ID] [--limit N] [--json]\n"
                                 "       %(prog)s show SESSIONID [--json]")
    leads.add_argument("action", nargs="?", choices=["show"], help="show one lead's whole story")
    leads.add_argument("session_id", nargs="?", type=int, metavar="SESSIONID")
    leads.add_argument("--chatbot", metavar="NAME", help="name or serial number")
    leads.add_argument("--since", type=_since, metavar="DATE", help="CreateTime from: YYYY-MM-DD, ISO time, or 7d/12h")
    leads.add_argument("--session", type=int, metavar="ID")
    leads.add_argument("--limit", type=int, default=50, metavar="N")
    leads.add_argument("--json", action="store_true")
    replay = sub.add_parser("replay", parents=[common], help="send already-notified leads to a sink again")
    replay.add_argument("--sink", required=True, metavar="NAME")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", type=int, metavar="ID")
    which.add_argument("--since", type=_since, metavar="DATE", help="CreateTime from: YYYY-MM-DD, ISO time, or 7d")
    replay.add_argument("--chatbot", metavar="NAME", help="only this chatbot's leads")
    replay.add_argument("--dry-run", action="store_true", help="list what would be sent, change nothing")
    state = sub.add_parser("state", help="state file maintenance").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    forget = state.add_parser("forget", parents=[common], help="drop a chatbot's seen leads: baseline it again")
    forget.add_argument("chatbot", metavar="CHATBOT")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation on a terminal")
    forget.add_argument("--dry-run", action="store_true", help="only say how many seen leads would be forgotten")
    sim = sub.add_parser("simulate", parents=[common], help="serve the built-in API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--api-key", default="sim-key")
    sim.add_argument("--chatbots", type=int, default=2, metavar="N")
    sim.add_argument("--every", type=float, default=5.0, metavar="SECONDS", help="a new lead this often")
    sim.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    return parser


def _parked(parser: argparse.ArgumentParser, *, required: bool, what: str = "{} deliveries") -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--dead", dest="parked", action="store_const", const="dead", help=what.format("dead"))
    group.add_argument("--held", dest="parked", action="store_const", const="held",
                       help=what.format("held") + " (held by the flood guard)")


def _since(value: str) -> datetime:
    from .ledger import parse_since
    try:
        return parse_since(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load(args: argparse.Namespace) -> Config:
    """Every command that reads a config comes here, so its secrets are registered before the
    command prints or logs anything (all output goes through logs.scrub)."""
    config = load_config(config_path(args.config))
    logs.register_secrets(config.secrets)
    return config


def _error(message: str) -> None:
    print(f"smarterbot-notifier: {message}", file=scrubbed(sys.stderr))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        return asyncio.run(_dispatch(args))
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return EXIT_CONFIG
    except NotifierError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace) -> int:
    from .service import Service  # keeps `check` and `--help` light

    command = args.command
    if command == "check":
        config = _load(args)
        print(_summary(config), file=scrubbed(sys.stdout))
        return EXIT_OK
    if command == "run":
        await Service(_load(args), reload=lambda: _load(args)).run()
        return EXIT_OK
    if command == "once":
        failed = await Service(_load(args)).once()
        for name in failed:
            _error(f"poll failed for chatbot {safe_text(repr(name), 80)} (see the log above)")
        return EXIT_FAILED if failed else EXIT_OK
    if command in ("status", "outbox", "state", "leads"):
        return _admin(args)
    if command == "replay":
        from .replay import replay
        await replay(_load(args), scrubbed(sys.stdout), sink=args.sink, session=args.session, since=args.since,
                     chatbot=args.chatbot, dry_run=args.dry_run)
        return EXIT_OK
    if command == "test-sink":
        from .sample import send_sample
        return EXIT_OK if await send_sample(_load(args), args.name, scrubbed(sys.stdout)) else EXIT_FAILED
    if command == "demo":
        from .demo import run_demo
        return await run_demo(args.duration, args.every)
    if command == "simulate":
        return await _simulate(args)
    raise AssertionError(command)  # pragma: no cover - argparse restricts the choices


def _admin(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from . import admin

    config = _load(args)
    out = scrubbed(sys.stdout)
    if args.command == "status":
        data = admin.status(config, datetime.now(UTC))
        if args.json:
            admin.print_status_json(data, out)
        else:
            admin.print_status(data, out)
        return EXIT_OK
    if args.command == "state":
        admin.state_forget(config, out, args.chatbot, yes=args.yes, dry_run=args.dry_run,
                           ask=input if sys.stdin.isatty() else None)
        return EXIT_OK
    if args.command == "leads":
        return _leads(config, args)
    if args.action == "list":
        admin.outbox_list(config, out, state=args.parked or "pending", sink=args.sink, as_json=args.json)
    elif args.action == "retry":
        admin.outbox_retry(config, out, ids=args.ids, state=args.parked, sink=args.sink)
    else:
        admin.outbox_purge(config, out, state=args.parked, older_than_days=args.older_than, sink=args.sink)
    return EXIT_OK


def _leads(config: Config, args: argparse.Namespace) -> int:
    from . import ledger

    if args.action == "show":
        session = args.session_id if args.session_id is not None else args.session
        if session is None:
            raise ConfigError("leads show needs a SESSIONID")
        ledger.show_lead(config, scrubbed(sys.stdout), session, as_json=args.json)
    elif args.session_id is not None:
        raise ConfigError(f"unexpected {args.session_id}: did you mean `leads show {args.session_id}`?")
    else:
        ledger.list_leads(config, scrubbed(sys.stdout), chatbot=args.chatbot, since=args.since, session=args.session,
                          limit=max(1, args.limit), as_json=args.json)
    return EXIT_OK


def _summary(config: Config) -> str:
    """What `check` understood. Names, paths and URLs are the config's own text (a TOML string
    may hold any character): each is shown through safe_text, the whole is scrubbed on output."""
    lines = [f"config OK: {safe_text(str(config.source), 300)}", f"  state: {safe_text(str(config.state_path), 300)}",
             f"  api: {safe_text(config.api.base_url, 300)} ({config.api.requests_per_second:g} requests/s)"]
    for chatbot in config.chatbots:
        lines.append(f"  chatbot {safe_text(chatbot.name, 80)} ({safe_text(chatbot.serial_number, 80)}): "
                     f"every {chatbot.interval:g}s, lookback {chatbot.lookback_days}d, first run {chatbot.first_run} "
                     f"-> {', '.join(safe_text(s, 80) for s in chatbot.sinks)}")
    for name, sink in config.sinks.items():
        lines.append(f"  sink {safe_text(name, 80)}: {sink.type}, "
                     f"types {', '.join(safe_text(t, 40) for t in sorted(sink.types))}")
    return "\n".join(lines)


async def _simulate(args: argparse.Namespace) -> int:
    import signal

    from .simulator import Simulator, generate_leads, start_simulator

    sim = Simulator(api_keys={args.api_key})
    serials = [f"sim{i:029d}" for i in range(1, args.chatbots + 1)]
    for serial in serials:
        sim.add_chatbot(serial)
    runner, base_url = await start_simulator(sim, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration is not None:
        loop.call_later(args.duration, stop.set)
    chatbots = "".join(f'\n[[chatbots]]\nname = "sim-{i}"\nserial_number = "{s}"\n'
                       for i, s in enumerate(serials, 1))
    print(f"# LeadList simulator at {base_url}, a new lead every {args.every:g}s. Ctrl-C to stop.\n"
          f"# Try it with this config:\n[api]\nbase_url = \"{base_url}\"\napi_key = \"{args.api_key}\"\n"
          f"{chatbots}\n[sinks.console]\ntype = \"console\"", flush=True)
    try:
        await generate_leads(sim, serials, args.every, stop)
    finally:
        await runner.cleanup()
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())



