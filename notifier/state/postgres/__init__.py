"""The PostgreSQL engine: one database, any number of daemons (claims lease deliveries)."""

from .backend import PostgresState

__all__ = ["PostgresState"]
