"""Who may come in: room passcodes, the admin token of the tool pages, backend URLs with secrets.

Room passcodes are stored only as salted scrypt hashes, in the Redis hash `vc:room:{room}:meta`
(field `passcode`), and mirrored in MongoDB `rooms` ({_id: room, passcode}) when a collection is
given, so that a Redis without persistence does not silently open a protected room. Wrong
passcodes are counted per room in Redis and limited (a 4-digit code falls in seconds otherwise);
the price is that someone hammering a room can keep everyone out of it for one window.

Backend URLs need nothing beyond the URL itself, which `Settings` already accepts as is:
- redis-py: `redis://user:password@host:port/db` (Redis 6 ACL user; `redis://:password@...` for
  `requirepass`), `rediss://...` for TLS, with TLS options as query arguments passed straight to
  the connection: `?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem` (also `ssl_certfile`,
  `ssl_keyfile` for client certificates). `unix:///path/redis.sock?password=...` for sockets.
- pymongo: `mongodb://user:password@h1,h2,h3/?replicaSet=rs0&authSource=admin&tls=true
  &tlsCAFile=/path/ca.pem` (`tlsCertificateKeyFile` for client certificates); `mongodb+srv://`
  turns TLS on by default (and needs the `dnspython` package).
- In both, reserved characters in user or password must be percent-encoded
  (`urllib.parse.quote(password, safe="")`).
`describe_backend_url` reads such a URL for display and logs without revealing the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis

from videochat.backends import keys
from videochat.exceptions import (
    AccessDenied,
    BackendUnavailable,
    RateLimited,
    SettingsError,
    ValidationError,
)
from videochat.media.participant import validate_room_name
from videochat.settings import Settings

logger = logging.getLogger(__name__)

PASSCODE_MIN = 4
PASSCODE_MAX = 128
# scrypt n=2**14, r=8: 16 MB and ~0.1 s per check here; fine for a join, slow for a guesser.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_N_MAX = 2**20  # a tampered record must not make us allocate gigabytes
_SALT_BYTES = 16
_HASH_BYTES = 32
PASSCODE_FIELD = "passcode"
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60


def meta_key(room: str) -> str:
    return keys.room_meta_key(room)


def failures_key(room: str) -> str:
    return keys.passcode_failures_key(room)


def _check_passcode(passcode: str) -> str:
    if not isinstance(passcode, str) or not PASSCODE_MIN <= len(passcode) <= PASSCODE_MAX:
        # Never echo a passcode back, not even a wrong one.
        shown = f"<{len(passcode)} characters>" if isinstance(passcode, str) else passcode
        raise ValidationError(
            "room passcode", shown, f"must be {PASSCODE_MIN}-{PASSCODE_MAX} characters"
        )
    return passcode


def _scrypt(passcode: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        passcode.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_HASH_BYTES,
        maxmem=128 * r * (n + p + 2) + 1024 * 1024,
    )


def hash_passcode(passcode: str, *, salt: bytes | None = None) -> str:
    """`scrypt$n$r$p$salt$hash` (base64); a fresh random salt unless one is given (tests)."""
    _check_passcode(passcode)
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = _scrypt(passcode, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_passcode(passcode: str, encoded: str) -> bool:
    """Constant-time check of `passcode` against a `hash_passcode` record; False if malformed."""
    try:
        scheme, n_s, r_s, p_s, salt_s, digest_s = encoded.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt, digest = base64.b64decode(salt_s), base64.b64decode(digest_s)
    except (ValueError, AttributeError):
        logger.warning("malformed passcode record ignored (treated as a mismatch)")
        return False
    if scheme != "scrypt" or not (2 <= n <= _SCRYPT_N_MAX and 1 <= r <= 32 and 1 <= p <= 16):
        logger.warning("passcode record with unsupported parameters treated as a mismatch")
        return False
    if not isinstance(passcode, str):
        return False
    return hmac.compare_digest(_scrypt(passcode, salt, n, r, p), digest)


class RoomsCollection(Protocol):
    """The slice of a pymongo Collection this module uses (the `rooms` collection)."""

    def find_one(self, filter: dict[str, Any], *args: Any, **kwargs: Any) -> Any: ...
    def update_one(self, filter: dict[str, Any], update: Any, upsert: bool = ...) -> Any: ...


class RoomAccess:
    """Optional passcodes per room, kept in Redis (and mirrored in MongoDB when given)."""

    def __init__(
        self,
        client: redis.Redis,
        rooms: RoomsCollection | None = None,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: int = FAILURE_WINDOW_S,
    ) -> None:
        self.redis = client
        self.rooms = rooms
        self.max_failures = max_failures
        self.window_s = window_s

    def set_passcode(self, room: str, passcode: str) -> None:
        validate_room_name(room)
        record = hash_passcode(passcode)
        # Mongo first: if it fails the room stays as it was rather than half-protected.
        if self.rooms is not None:
            self.rooms.update_one(
                {"_id": room}, {"$set": {PASSCODE_FIELD: record, "passcode_set_at": time.time()}},
                upsert=True,
            )
        self.redis.hset(meta_key(room), PASSCODE_FIELD, record)
        self.redis.delete(failures_key(room))
        logger.info("passcode set for room %s", room)

    def clear_passcode(self, room: str) -> None:
        validate_room_name(room)
        if self.rooms is not None:
            self.rooms.update_one(
                {"_id": room}, {"$unset": {PASSCODE_FIELD: "", "passcode_set_at": ""}}
            )
        self.redis.hdel(meta_key(room), PASSCODE_FIELD)
        self.redis.delete(failures_key(room))
        logger.info("passcode cleared for room %s", room)

    def requires_passcode(self, room: str) -> bool:
        return self._record(validate_room_name(room)) is not None

    def check(self, room: str, passcode: str | None) -> None:
        """Return if `passcode` opens `room` (or it has none); raise AccessDenied otherwise.

        Raises RateLimited after too many wrong passcodes for the room within the window, and
        BackendUnavailable when neither Redis nor MongoDB can say whether the room is protected.
        """
        validate_room_name(room)
        record = self._record(room)
        if record is None:
            return
        if not passcode:
            raise AccessDenied(f"room {room!r} is protected: enter its passcode to join")
        failures = self._failures(room)
        if failures >= self.max_failures:
            raise RateLimited(f"wrong passcodes for room {room!r}", self.max_failures,
                              self.window_s)
        if verify_passcode(passcode, record):
            return
        self._count_failure(room)
        raise AccessDenied(f"wrong passcode for room {room!r}")

    def _record(self, room: str) -> str | None:
        try:
            value = self.redis.hget(meta_key(room), PASSCODE_FIELD)
        except redis.RedisError as exc:
            if self.rooms is None:
                # Fail closed: a protected room must not open because Redis is down.
                raise BackendUnavailable(
                    f"cannot tell whether room {room!r} needs a passcode: Redis unavailable ({exc})"
                ) from exc
            logger.warning("Redis unavailable, reading room %s passcode from MongoDB", room)
            return self._mongo_record(room)
        if value is not None:
            return value.decode() if isinstance(value, bytes) else str(value)
        if self.rooms is None:
            return None
        record = self._mongo_record(room)
        if record is not None:
            # Redis lost it (restart without persistence): put it back for the next check.
            self.redis.hset(meta_key(room), PASSCODE_FIELD, record)
        return record

    def _mongo_record(self, room: str) -> str | None:
        assert self.rooms is not None
        try:
            doc = self.rooms.find_one({"_id": room}, {PASSCODE_FIELD: 1})
        except Exception as exc:  # pymongo.errors.PyMongoError; the protocol keeps pymongo out
            raise BackendUnavailable(
                f"cannot tell whether room {room!r} needs a passcode: MongoDB unavailable ({exc})"
            ) from exc
        value = doc.get(PASSCODE_FIELD) if doc else None
        return str(value) if value else None

    def _failures(self, room: str) -> int:
        try:
            return int(self.redis.get(failures_key(room)) or 0)
        except redis.RedisError:
            return 0  # scrypt's cost still slows a guesser while Redis is away

    def _count_failure(self, room: str) -> None:
        try:
            pipe = self.redis.pipeline()
            pipe.incr(failures_key(room))
            pipe.expire(failures_key(room), self.window_s, nx=True)
            pipe.execute()
        except redis.RedisError:
            logger.warning("could not count a wrong passcode for room %s", room)


# --- the tool pages -----------------------------------------------------------------------------


def require_admin(settings: Settings, token: str | None, page: str) -> None:
    """Raise AccessDenied unless `token` opens the tool `page` (always open in dev mode)."""
    if settings.check_admin(token):
        return
    if settings.admin_token is None:
        raise AccessDenied(
            f"the {page} page is locked: development mode is off and VIDEOCHAT_ADMIN_TOKEN "
            "is not set"
        )
    if not token:
        raise AccessDenied(f"the {page} page needs the admin token")
    raise AccessDenied(f"the {page} page: wrong admin token")


# --- backend URLs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendUrl:
    """What a Redis or MongoDB URL asks for, safe to show: the password is never kept."""

    kind: Literal["redis", "mongodb"]
    scheme: str
    hosts: tuple[str, ...]
    tls: bool
    username: str | None
    has_password: bool
    redacted: str


_TRUE = ("true", "1", "yes")


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***` (also a `password=` query argument)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hosts}"
    query = "&".join(
        f"{k}={'***' if k.lower() == 'password' else quote(v, safe='/:,')}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    # Not urlunsplit: it drops the "//" of an empty authority (unix:///path).
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def describe_backend_url(url: str) -> BackendUrl:
    """Parse a REDIS_URL or MONGODB_URI (no connection, no DNS) for status pages and logs."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    if scheme in ("redis", "rediss", "unix"):
        kind: Literal["redis", "mongodb"] = "redis"
        tls = scheme == "rediss"
    elif scheme in ("mongodb", "mongodb+srv"):
        kind = "mongodb"
        flag = query.get("tls", query.get("ssl"))
        tls = flag.lower() in _TRUE if flag is not None else scheme == "mongodb+srv"
    else:
        raise SettingsError("backend URL", redact_url(url), "must be redis(s)://, unix:// or "
                            "mongodb(+srv)://")
    username: str | None = None
    has_password = "password" in query
    hostpart = parts.netloc
    if "@" in hostpart:
        userinfo, hostpart = hostpart.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        username = unquote(user) or None
        has_password = has_password or bool(password)
    hosts = tuple(h for h in hostpart.split(",") if h) or (parts.path,)
    return BackendUrl(kind, scheme, hosts, tls, username, has_password, redact_url(url))
