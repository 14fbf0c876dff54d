"""The command line. Anything an operator can get wrong ends in one clear line on stderr and an
exit code (0 done, 1 failed, 2 usage or config error, 130 interrupted), never a traceback; a
closed output (`status | head -1`) ends the command quietly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import datetime

import structlog

from . import logs
from .cliparser import PROG, BadUsage, build_parser, unknown_option, walk
from .config import Config, config_path, load_config
from .exceptions import ConfigError, NotifierError, UsageError
from .text import safe_text, scrubbed
from .wording import plural

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def _load(args: argparse.Namespace) -> Config:
    """Every command that reads a config comes here, so its secrets are registered before the
    command prints or logs anything (all output goes through logs.scrub)."""
    config = load_config(config_path(args.config))
    logs.register_secrets(config.secrets)
    return config


def _load_with_state(args: argparse.Namespace) -> Config:
    """For the commands that open the state: a `[state] path` that cannot be one is a config error
    that says why, not "File exists"."""
    config = _load(args)
    if config.state_url is None:
        from .state.sqlite import location_problem
        problem = location_problem(config.state_path)
        if problem is not None:
            raise ConfigError(problem, key="state.path", path=str(config.source))
    return config


def _error(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # a closed stderr has no one to tell
        print(f"{PROG}: {message}", file=scrubbed(sys.stderr))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # the reader went away (`status | head -1`): stop quietly
        with contextlib.suppress(OSError, ValueError):  # and let the interpreter's last flush go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_CONFIG
        if args.command in ("demo", "simulate", "completion") and args.config is not None:
            parser.error(f"{args.command} reads no config file: leave out --config")
    except BadUsage as exc:
        where, unknown = unknown_option(parser, argv)
        where, message = (where, unknown) if unknown else (exc.parser, exc.message)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"{where.format_usage()}{where.prog}: error: {message}\n")
        return EXIT_CONFIG
    except SystemExit as exc:  # --help, --version: printed, nothing else to do
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    logs.configure(args.log_level, args.log_format)
    try:
        return asyncio.run(_dispatch(args))
    except UsageError as exc:
        _error(str(exc))
        return EXIT_CONFIG
    except ConfigError as exc:  # one line per problem: a file with several says them all
        if args.command in DAEMONS:
            return _fatal(exc, EXIT_CONFIG)
        problems = str(exc).splitlines()
        _error("config error: " + problems[0] if len(problems) == 1 else "config error:\n  " + "\n  ".join(problems))
        return EXIT_CONFIG
    except NotifierError as exc:
        if args.command in DAEMONS:
            return _fatal(exc, EXIT_FAILED)
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


DAEMONS = ("run", "once")  # their stderr is a log (journald, docker): errors are log records too


def _fatal(exc: NotifierError, code: int) -> int:
    """A daemon that cannot go on says so as one error-level record in the chosen log format,
    with the config key and line when a config value is to blame."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    fields: dict[str, object] = {"error": lines[0]}
    if isinstance(exc, ConfigError):
        fields.update(key=exc.key, line=exc.line)
        if len(lines) > 1:
            fields["problems"] = lines
    with contextlib.suppress(Exception):
        structlog.get_logger("notifier").error("cannot continue", **fields)
    return code


async def _dispatch(args: argparse.Namespace) -> int:
    from .service import Service  # keeps `check` and `--help` light

    command = args.command
    if command == "check":
        return await _check(args)
    if command == "run":
        await Service(_load_with_state(args), reload=lambda: _load(args)).run()
        return EXIT_OK
    if command == "once":
        service = Service(_load_with_state(args))
        failed = await service.once()
        for name in failed:
            _error(f"poll failed for chatbot {safe_text(repr(name), 80)} (see the log above)")
        attempts = service.dispatcher.failed if service.dispatcher is not None else 0
        if args.strict and attempts:
            _error(f"{plural(attempts, 'delivery attempt')} failed (see the log above and `outbox list`)")
        return EXIT_FAILED if failed or (args.strict and attempts) else EXIT_OK
    if command in ("status", "outbox", "state", "leads"):
        return await _admin(args)
    if command == "replay":
        from .replay import replay
        await replay(_load_with_state(args), scrubbed(sys.stdout), sink=args.sink, session=args.session,
                     since=args.since, chatbot=args.chatbot, dry_run=args.dry_run)
        return EXIT_OK
    if command == "test-sink":
        from .sample import send_sample
        config = _load(args) if args.session is None else _load_with_state(args)
        sent = await send_sample(config, args.name, scrubbed(sys.stdout), session=args.session,
                                 event=args.event)
        return EXIT_OK if sent else EXIT_FAILED
    if command == "demo":
        from .demo import run_demo
        return await run_demo(args.duration, args.every)
    if command == "simulate":
        return await _simulate(args)
    if command == "completion":
        return _completion(args.shell)
    raise AssertionError(command)  # pragma: no cover - argparse restricts the choices


async def _admin(args: argparse.Namespace) -> int:
    from datetime import UTC

    from . import admin

    config = _load_with_state(args)
    out = scrubbed(sys.stdout)
    if args.command == "status":
        data = await admin.status(config, datetime.now(UTC))
        if args.json:
            admin.print_status_json(data, out)
        else:
            admin.print_status(data, out)
        return EXIT_OK
    if args.command == "state" and args.action == "migrate":
        from .migration import migrate_state, target_url
        await migrate_state(config, out, target_url(args.to, args.to_file))
        return EXIT_OK
    if args.command == "state":
        await admin.state_forget(config, out, args.chatbot, yes=args.yes, dry_run=args.dry_run,
                           ask=_ask if sys.stdin.isatty() else None)
        return EXIT_OK
    if args.command == "leads":
        return await _leads(config, args)
    if args.action == "list":
        await admin.outbox_list(config, out, state=args.parked or "pending", sink=args.sink, as_json=args.json,
                          limit=args.limit)
    elif args.action == "retry":
        await admin.outbox_retry(config, out, ids=args.ids, state=args.parked, sink=args.sink)
    else:
        await admin.outbox_purge(config, out, state=args.parked, older_than_days=args.older_than, sink=args.sink)
    return EXIT_OK


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:  # Ctrl-D: no
        return ""


async def _leads(config: Config, args: argparse.Namespace) -> int:
    from . import ledger

    out = scrubbed(sys.stdout)
    if args.action not in (None, "show"):
        number = args.action.lstrip("-").isdigit()
        raise UsageError(f"unexpected {safe_text(repr(args.action), 80)}: "
                         + (f"did you mean `leads show {args.action}`?" if number else "the only action is `show`"))
    if args.action == "show":
        session = args.session_id if args.session_id is not None else args.session
        if session is None and args.webhook_id is None:
            raise UsageError("leads show needs a SESSIONID (or --webhook-id ID)")
        await ledger.show_lead(config, out, session, as_json=args.json, webhook_id=args.webhook_id)
    else:
        await ledger.list_leads(config, out, chatbot=args.chatbot, since=args.since, session=args.session,
                          limit=args.limit, as_json=args.json, webhook_id=args.webhook_id)
    return EXIT_OK


def _completion(shell: str) -> int:
    """Generated from the parser itself by shtab, so it always knows every command and option."""
    import shtab

    parser = build_parser()
    for each in walk(parser):
        for action in each._actions:
            if action.dest == "config":
                action.complete = shtab.FILE  # type: ignore[attr-defined]
    print(shtab.complete(parser, shell=shell), file=sys.stdout)
    return EXIT_OK


async def _check(args: argparse.Namespace) -> int:
    """Every problem at once (key and line each), the state location included; or everything
    that was understood, with warnings."""
    from .checkreport import problems_report, report
    from .state import probe

    try:
        config = _load_with_state(args)
    except ConfigError as exc:
        if args.json:
            print(problems_report(exc, as_json=True), file=scrubbed(sys.stdout))
        else:
            _error("config error:\n" + problems_report(exc, as_json=False))
        return EXIT_CONFIG
    usable, state = await probe(config)
    print(report(config, as_json=args.json, state=state), file=scrubbed(sys.stdout))
    if not usable:
        _error(f"the state cannot be used: {state}")
        return EXIT_FAILED
    return EXIT_OK


async def _simulate(args: argparse.Namespace) -> int:
    import signal

    from .simulator import Simulator, generate_leads, start_simulator

    sim = Simulator(api_keys={args.api_key})
    serials = [f"sim{i:029d}" for i in range(1, args.chatbots + 1)]
    for serial in serials:
        sim.add_chatbot(serial)
    try:
        runner, base_url = await start_simulator(sim, args.host, args.port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise NotifierError(f"cannot listen on {safe_text(args.host, 100)}:{args.port}: {exc.strerror or exc}") \
            from None
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
