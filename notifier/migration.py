"""`smarterbot-notifier state migrate --to URL`: move an installation from its SQLite file to
PostgreSQL. Everything the file holds (seen keys and coverage, pending, held and dead deliveries
with their outbox ids, the ledger) is copied into an empty database in one transaction, so after
switching `[state]` to the URL no seen lead is notified again and every pending delivery is sent
once, with its original webhook-id. The file is left as it was: it is the way back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import IO

from .config import Config
from .exceptions import NotifierError, StateError, UsageError
from .logs import register_secrets
from .state import Migrated, open_state
from .state.location import password, redacted, url_problem
from .state.opening import open_url
from .text import safe_text, scrubbed
from .wording import plural


def target_url(to: str | None, to_file: str | None) -> str:
    """The URL given, or read from a file; refused early, and never repeated, when it is not one."""
    if to_file is not None:
        try:
            to = Path(to_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--to-file {safe_text(to_file, 200)}: cannot be read: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    assert to is not None
    secret = password(to)
    if secret:  # the password alone: the URL without it is what the output names
        register_secrets([secret])
    problem = url_problem(to)
    if problem is not None:
        raise UsageError(f"the target URL {problem}")
    return to


async def migrate_state(config: Config, out: IO[str], url: str) -> Migrated:
    out = scrubbed(out)
    if config.state_url is not None:
        raise UsageError("[state] url already names a PostgreSQL database; `state migrate` copies the SQLite "
                         "file of [state] path into one")
    try:  # the lock: no daemon changes the file while it is copied
        source = await open_state(config, "sender")
    except StateError as exc:
        raise NotifierError(f"{exc} (stop the daemon before migrating; nothing was copied)") from None
    try:
        snapshot = await source.export()
    finally:
        await source.close()
    target = await open_url(url, "migrate")
    try:
        copied = await target.import_snapshot(snapshot)
    finally:
        await target.close()
    states = Counter(row[3] for row in snapshot.outbox)
    print(f"copied {config.state_path} into {redacted(url)}:\n"
          f"  {plural(copied.chatbots, 'chatbot')} (seen keys and coverage), {plural(copied.leads, 'lead')}\n"
          f"  {plural(copied.deliveries, 'delivery', 'deliveries')}: {states['pending']} pending, "
          f"{states['held']} held, {states['dead']} dead, {states['done']} delivered\n"
          f"  {plural(copied.attempts, 'ledger line')}\n"
          "next: set [state] url to this database (and remove [state] path), then start the daemon; "
          f"{config.state_path} is left as it was", file=out)
    return copied
