"""Opening the state the config names, in the role the command plays:
- `daemon` (`run`, `once`): creates the state if needed; one daemon per SQLite file (its lock).
- `sender` (`replay` with no daemon running): an existing state, and SQLite's lock, so no
  daemon starts sending beside it; PostgreSQL registers it as an instance while it sends.
- `operator` (`status`, `outbox`, `leads`, `state forget`, `check`): an existing state, no lock;
  runs beside a daemon.
- `migrate` (the target of `state migrate`): a PostgreSQL database, its schema created if needed.
Nothing outside state/ picks an engine or imports a driver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..exceptions import StateError, StateMissing
from .interface import State

if TYPE_CHECKING:
    from ..config import Config

Role = Literal["daemon", "operator", "sender", "migrate"]


async def open_state(config: Config, role: Role = "daemon") -> State:
    if config.state_url is not None:
        return await open_url(config.state_url, role)
    from .sqlite import SQLiteState, location_problem
    path = config.state_path
    if role != "daemon" and not path.exists():
        problem = location_problem(path)
        if problem:
            raise StateError(f"state file {path}: {problem}")
        raise StateMissing(f"state file {path} does not exist yet (`run` or `once` creates it)")
    return SQLiteState(path, "daemon" if role == "migrate" else role)


async def probe(config: Config) -> tuple[bool, str]:
    """For `check`: can the state be opened, and is its schema current? Never creates anything."""
    try:
        state = await open_state(config, "operator")
    except StateMissing:
        return True, "none yet (`run` or `once` creates it)"
    except StateError as exc:
        return False, str(exc)
    try:
        return True, await state.schema_state()
    finally:
        await state.close()


async def open_url(url: str, role: Role) -> State:
    """A PostgreSQL state by its URL."""
    from .postgres import PostgresState
    return await PostgresState.open(url, role)
