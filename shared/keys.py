"""Secrets the service hands out, and how much a caller may submit.

A job token cancels or deletes one job; an API key identifies a client and carries its quota.
Only their SHA-256 is stored: both are long random strings, so a fast hash is enough (a slow
password hash only helps secrets a person chose). Submissions are counted in Redis, in a
sliding window per API key or per client address, so every web process sees the same count.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import secrets
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import describe_db_error
from .models import ApiKey, utcnow
from .settings import SettingsError, load_settings

KEY_PREFIX = "imp"


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest stored in place of a token or key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_hash: str | None) -> bool:
    """Whether `secret` is the one whose hash was stored, in constant time."""
    return stored_hash is not None and hmac.compare_digest(hash_secret(secret), stored_hash)


def new_job_token() -> str:
    """192 random bits; given once, in the answer to a submission."""
    return secrets.token_urlsafe(24)


# --- API keys ---------------------------------------------------------------------------------


def create_key(session: Session, name: str, jobs_per_day: int | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret form `imp_<id>_<secret>`, which is shown once and never stored."""
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(id=key_id, name=name, key_hash=hash_secret(secret), jobs_per_day=jobs_per_day, created_at=utcnow())
    session.add(key)
    session.commit()
    return key, secret


def find_key(session: Session, presented: str) -> ApiKey | None:
    """The live (not revoked) key whose secret this is, or None."""
    prefix, _, rest = presented.partition("_")
    key_id, _, _ = rest.partition("_")
    if prefix != KEY_PREFIX or not key_id or len(key_id) > 16:
        return None
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None or not matches(presented, key.key_hash):
        return None
    return key


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    """Revoke a key (at once, for every web process); None if there is no such key."""
    key = session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


# --- submission limits ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """At most `count` submissions per `window` seconds for one bucket ("key:ID", "addr:IP")."""

    bucket: str
    count: int
    window: int


class LimitExceeded(Exception):
    def __init__(self, limit: Limit, retry_after: int):
        super().__init__(f"{limit.bucket}: {limit.count} per {limit.window} s")
        self.limit = limit
        self.retry_after = retry_after


class LimiterUnavailable(RuntimeError):
    """Redis could not be reached to count a submission."""


# A sorted set per bucket holds one member per counted submission, scored by the time it was
# taken (Redis's clock, so every web machine agrees). Old members fall out of the window; a
# full window answers how many milliseconds until its oldest member leaves.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class RateLimiter:
    """Sliding-window counts in Redis, atomic (one Lua script) and shared by every process."""

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.namespace = namespace  # one deployment's keys, apart from another's on the same Redis
        self._take = client.register_script(_TAKE)

    def take(self, limit: Limit) -> str:
        """Count one submission and return its ticket; LimitExceeded when the window is full."""
        ticket = uuid.uuid4().hex
        try:
            wait_ms = int(self._take(keys=[self._key(limit)], args=[limit.window * 1000, limit.count, ticket]))
        except redis.RedisError as err:
            raise LimiterUnavailable(str(err)) from err
        if wait_ms:
            raise LimitExceeded(limit, -(-wait_ms // 1000))
        return ticket

    def give_back(self, limit: Limit, ticket: str) -> None:
        """Uncount a submission that made no job (it was invalid, or the queue was down)."""
        try:
            self.client.zrem(self._key(limit), ticket)
        except redis.RedisError as err:
            raise LimiterUnavailable(str(err)) from err

    def _key(self, limit: Limit) -> str:
        return f"impasto:{self.namespace}:limit:{limit.bucket}"


# --- impasto keys -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Create, list and revoke API keys (create NAME [--jobs-per-day N], list, revoke ID)."""
    parser = argparse.ArgumentParser(prog="impasto keys", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("create", help="make a key and print it (once: only its hash is kept)")
    new.add_argument("name", help="who or what uses the key")
    new.add_argument(
        "--jobs-per-day",
        type=int,
        default=None,
        metavar="N",
        help="jobs this key may submit per rolling 24 hours (default: no limit)",
    )
    sub.add_parser("list", help="every key: id, name, quota, created, revoked")
    gone = sub.add_parser("revoke", help="refuse a key from now on")
    gone.add_argument("id", help="the key's id, as `list` shows it")
    args = parser.parse_args(argv)
    if args.action == "create" and args.jobs_per_day is not None and args.jobs_per_day < 1:
        parser.error("--jobs-per-day must be at least 1 (leave it out for no limit)")
    try:
        url = load_settings().database_url
    except SettingsError as err:
        print(f"impasto keys: error: {err}", file=sys.stderr)
        return 2
    import sqlalchemy.exc

    from .db import make_engine, session_factory

    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            return _run(session, args)
    except sqlalchemy.exc.OperationalError as err:
        print(
            f"impasto keys: error: cannot use the database (run `impasto db upgrade` first?): {describe_db_error(err)}",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()


def _run(session: Session, args: argparse.Namespace) -> int:
    if args.action == "create":
        key, secret = create_key(session, args.name, args.jobs_per_day)
        quota = f"{key.jobs_per_day} jobs per 24 h" if key.jobs_per_day else "no quota"
        print(secret)
        print(
            f"key {key.id} ({key.name}, {quota}); send it as 'Authorization: Bearer KEY'. It is not shown again.",
            file=sys.stderr,
        )
        return 0
    if args.action == "list":
        print(f"{'id':<12}  {'name':<24}  {'jobs/day':>8}  {'created':<20}  revoked")
        for key in list_keys(session):
            print(
                f"{key.id:<12}  {key.name[:24]:<24}  {key.jobs_per_day or '-':>8}  "
                f"{_when(key.created_at):<20}  {_when(key.revoked_at) if key.revoked_at else '-'}"
            )
        return 0
    key = revoke_key(session, args.id)
    if key is None:
        print(f"impasto keys: error: no key {args.id!r}; `impasto keys list` shows them", file=sys.stderr)
        return 1
    print(f"key {key.id} ({key.name}) revoked at {_when(key.revoked_at)}")
    return 0


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""
