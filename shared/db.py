"""Database engine and sessions, for SQLite (one machine) and PostgreSQL (many)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

# libpq's limits for a PostgreSQL host that is gone, where the URL sets none: without them a
# connection attempt, or a query on a connection whose host vanished, waits on TCP for
# minutes. tcp_user_timeout bounds data left unacknowledged, not a slow query's run time.
POSTGRES_CONNECT_ARGS = {"connect_timeout": 5, "tcp_user_timeout": 10_000}  # seconds; milliseconds
# How long a request waits for a pooled connection when all are in use, before it fails.
POOL_TIMEOUT_S = 10


def normalize_url(url: str) -> str:
    """`postgresql://` means the psycopg 3 driver, the one the project installs."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, idle_in_transaction_s: int | None = None, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets its folder created, WAL mode and a busy timeout so
    that the web and worker processes can write to the same file. `idle_in_transaction_s`
    (PostgreSQL): the server ends a session left that long inside a transaction, so that a
    process frozen mid-write (SIGSTOP, a VM paused) cannot hold a job's row lock for ever."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in parsed.query}
    if idle_in_transaction_s:
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={idle_in_transaction_s * 1000}"
    # pre_ping: a pooled connection is tested (a round trip) before each use, so connections
    # that died in an outage are replaced by fresh ones once the database is back.
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": POOL_TIMEOUT_S, "connect_args": connect_args}
    engine = create_engine(url, **{**options, **kwargs})
    event.listen(engine, "handle_error", _failed_ping_is_a_disconnect)
    return engine


def database_unreachable(err: BaseException) -> bool:
    """Whether an error means the database cannot be reached for now (an outage, a connection
    cut, a full pool), as opposed to a fault in a query."""
    if isinstance(err, PoolTimeout):
        return True
    return isinstance(err, (OperationalError, InterfaceError)) or (
        isinstance(err, DBAPIError) and err.connection_invalidated
    )


def describe_db_error(err: BaseException) -> str:
    """The first line of the driver's message, for a one-line log or answer."""
    cause = getattr(err, "orig", None) or err
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _failed_ping_is_a_disconnect(context: ExceptionContext) -> None:
    # A connection whose ping fails is replaced, whatever the error: a connection reset in the
    # middle of psycopg's ping surfaces as ProgrammingError ("can't change 'autocommit' now"),
    # which SQLAlchemy would otherwise raise as a fault in the query rather than retry.
    if context.is_pre_ping:
        context.is_disconnect = True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: views render them after the session is done.
    return sessionmaker(engine, expire_on_commit=False)
