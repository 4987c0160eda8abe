"""Who is asking, and what they may do.

- An API client may send `Authorization: Bearer KEY`; its jobs are its own and count against
  the key's quota. Without a key, submissions count against the client address's hourly limit.
- A browser gets a random secret, signed with the server's key (IMPASTO_SECRET_KEY), in an
  HttpOnly, SameSite=Lax cookie on its first page; the jobs it submits through the form are its
  own. A cookie the server did not sign is replaced by a fresh one, never taken as it comes.
  The form and the page's cancel/delete calls carry a CSRF token derived from that cookie,
  which another site can neither read nor send.
- Each job's token (given once, when it is created) cancels or deletes it, from anywhere.
Viewing a job needs none of these: its id is 128 random bits, so its URL is the capability.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from flask import Response, current_app, g, request

from shared.keys import Limit, LimiterUnavailable, LimitExceeded, RateLimiter, find_key, hash_secret, matches
from shared.models import ApiKey, Job, Sweep

from .services import services

log = logging.getLogger("impasto.web")

BROWSER_COOKIE = "impasto_browser"
BROWSER_COOKIE_MAX_AGE = 365 * 24 * 3600
# secrets.token_urlsafe(32), a dot, and its HMAC-SHA256 under the server's key (base64url).
_BROWSER_COOKIE_VALUE = re.compile(r"^([A-Za-z0-9_-]{43})\.([A-Za-z0-9_-]{43})$")
JOB_TOKEN_HEADER = "X-Job-Token"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
DAY, HOUR = 24 * 3600, 3600


class Unauthorized(Exception):
    """A key that is malformed, unknown or revoked, or none where one is required (401)."""


# --- API keys -----------------------------------------------------------------------------------


def api_key() -> ApiKey | None:
    """The live key sent as `Authorization: Bearer KEY`; None when no key is sent."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("send the API key as 'Authorization: Bearer KEY'")
    with services().sessions() as session:
        key = find_key(session, presented.strip())
    if key is None:
        raise Unauthorized("unknown or revoked API key")
    return key


def key_owner(key: ApiKey) -> str:
    return f"key:{key.id}"


# --- the browser --------------------------------------------------------------------------------


def browser_secret() -> str:
    """The browser's cookie, when the server made it; else a new one that `remember_browser` sets."""
    presented = request.cookies.get(BROWSER_COOKIE, "")
    if _server_made(presented):
        return presented
    if "browser_secret" not in g:
        g.browser_secret = _sign(secrets.token_urlsafe(32))
    return g.browser_secret


def _sign(secret: str) -> str:
    mac = hmac.new(server_key(), b"impasto browser " + secret.encode(), hashlib.sha256).digest()
    return f"{secret}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _server_made(value: str) -> bool:
    """Whether a cookie's value is one this service signed (not made up, nor planted unsigned)."""
    found = _BROWSER_COOKIE_VALUE.match(value)
    return found is not None and hmac.compare_digest(_sign(found.group(1)).encode(), value.encode())


def server_key() -> bytes:
    """The key that signs cookies and CSRF tokens: IMPASTO_SECRET_KEY, the same in every process."""
    return current_app.config["IMPASTO_SECRET_KEY"].encode()


def remember_browser(response: Response) -> Response:
    """Set the cookie for a browser that came without one (after a page's request)."""
    if "browser_secret" in g:
        response.set_cookie(
            BROWSER_COOKIE,
            g.browser_secret,
            max_age=BROWSER_COOKIE_MAX_AGE,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=_over_https(),
        )
    return response


def _over_https() -> bool:
    """Whether the browser reached us over HTTPS: directly, or through the trusted proxies
    (their X-Forwarded-Proto, read as ProxyFix(x_proto=N) would)."""
    trusted = services().settings.trusted_proxies
    if request.is_secure or not trusted:
        return request.is_secure
    values = [v.strip() for v in ",".join(request.headers.getlist("X-Forwarded-Proto")).split(",")]
    return len(values) >= trusted and values[-trusted] == "https"


def browser_owner() -> str | None:
    """The owner id of the browser's cookie ("browser:" + its SHA-256), None without a cookie."""
    presented = request.cookies.get(BROWSER_COOKIE, "")
    return _owner_of(presented) if _server_made(presented) else None


def csrf_token() -> str:
    """The token the pages put in the form and send with cancel/delete: an HMAC of the browser's
    cookie under the server's key, so only a page that read it from our HTML can send it, and
    nobody who knows (or planted) a cookie can compute it."""
    return hmac.new(server_key(), b"impasto csrf " + browser_secret().encode(), hashlib.sha256).hexdigest()


def csrf_ok(sent: str | None) -> bool:
    """Whether `sent` is this browser's CSRF token (the cookie must have come with the request)."""
    return bool(sent) and browser_owner() is not None and hmac.compare_digest(sent.encode(), csrf_token().encode())


def _owner_of(secret: str) -> str:
    return "browser:" + hash_secret(secret)


# --- a job's token, key or browser --------------------------------------------------------------


def may_change(job: Job | Sweep) -> bool:
    """Whether this request may cancel or delete `job` (or a sweep's cells): it carries the job's token (header
    X-Job-Token), the API key that submitted it, or comes from the submitting browser's own
    page (its cookie and the CSRF header, which no other site can send)."""
    token = request.headers.get(JOB_TOKEN_HEADER)
    if token and matches(token, job.token_hash):
        return True
    key = api_key()
    if key is not None and job.owner == key_owner(key):
        return True
    return job.owner is not None and job.owner == browser_owner() and csrf_ok(request.headers.get(CSRF_HEADER))


# --- how many jobs a caller may submit ----------------------------------------------------------


def submission_limit(key: ApiKey | None) -> Limit | None:
    """A key's daily quota, or the hourly limit of an anonymous client's address; None: no limit."""
    if key is not None:
        return Limit(f"key:{key.id}", key.jobs_per_day, DAY) if key.jobs_per_day else None
    per_hour = services().settings.anonymous_jobs_per_hour
    return Limit(f"addr:{client_address()}", per_hour, HOUR) if per_hour else None


@contextmanager
def counted(limit: Limit | None, jobs: int = 1) -> Iterator[None]:
    """Count a submission of `jobs` jobs against `limit` (LimitExceeded when it would go over);
    a submission that makes no job (refused, or the queue is down) is given back."""
    if limit is None:
        yield
        return
    limiter = _limiter()
    tickets: list[str] = []
    try:
        for _ in range(jobs):
            tickets.append(limiter.take(limit))
        yield
    except BaseException:
        try:
            for ticket in tickets:
                limiter.give_back(limit, ticket)
        except LimiterUnavailable as err:  # the error on its way out matters more
            log.warning("event=limit-not-given-back bucket=%s error=%s", limit.bucket, err)
        raise


def client_address() -> str:
    """The address a client is counted by: the connection's peer, or with
    IMPASTO_TRUSTED_PROXIES=N the N-th X-Forwarded-For entry from the right (the one werkzeug's
    ProxyFix(x_for=N) picks: the last N proxies are ours, anything left of that is the client's
    to forge). An IPv6 client counts by its /64, which one subscriber usually holds whole."""
    raw = request.remote_addr or ""
    trusted = services().settings.trusted_proxies
    if trusted:
        forwarded = [v.strip() for v in ",".join(request.headers.getlist("X-Forwarded-For")).split(",")]
        if len(forwarded) >= trusted:
            raw = forwarded[-trusted]
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw[:64] or "unknown"
    if address.version == 6 and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _limiter() -> RateLimiter:
    """One limiter per app, on the broker's Redis, its keys apart from other deployments' by
    the queue's name."""
    limiter = current_app.extensions.get("impasto.limiter")
    if limiter is None:
        settings = services().settings
        client = redis.Redis.from_url(settings.require_broker(), socket_timeout=5, socket_connect_timeout=2)
        limiter = current_app.extensions.setdefault("impasto.limiter", RateLimiter(client, settings.queue))
    return limiter


def limit_message(err: LimitExceeded) -> str:
    """What a person reads when a submission is over its limit."""
    wait = _duration(err.retry_after)
    if err.limit.bucket.startswith("key:"):
        return f"this API key may submit {err.limit.count} jobs per 24 hours; the next one may be submitted in {wait}"
    return f"at most {err.limit.count} jobs per hour from one address without an API key; try again in {wait}"


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    minutes = -(-seconds // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
