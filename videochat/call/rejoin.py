"""Rejoin tokens: what a tab holds to get its own seat back after the app process restarts.

A seat is matched by token, never by display name: after a restart the new process knows
nobody, and a name is something anyone can type. The token is `payload.signature`, both
base64url: the payload is JSON {room, participant id, name, issued (the first join's time)},
the signature HMAC-SHA256 over the payload with the server's rejoin key. The key comes from
`VIDEOCHAT_REJOIN_SECRET`, or else from `<state folder>/rejoin.key`, created once (mode 0600) so
that tokens stay valid across restarts of a process started from the same folder.

A valid signature only proves that this server issued the token; whether the seat still exists
(the participant did not leave, the call did not end) is for `videochat.call.seats` to decide.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from videochat.exceptions import RejoinRefused, SettingsError
from videochat.media.participant import validate_room_name

logger = logging.getLogger(__name__)

KEY_FILE = "rejoin.key"
KEY_BYTES = 32
MAX_TOKEN = 600  # room 40 + name 32 (x4 UTF-8) + id 32 + time, base64 and a signature: < 400
_PID_CHARS = set("0123456789abcdef")


@dataclass(frozen=True)
class RejoinClaim:
    """What a valid token says: this tab was `participant_id`, called `name`, in `room`."""

    room: str
    participant_id: str
    name: str
    issued: float

    def __post_init__(self) -> None:
        validate_room_name(self.room)
        # The name as seated ("ana (2)" included), so not the join form's rule: only sane.
        if not (1 <= len(self.name) <= 48 and self.name.isprintable()):
            raise ValueError(f"name {self.name!r} is not a seated display name")
        if not (len(self.participant_id) == 32 and set(self.participant_id) <= _PID_CHARS):
            raise ValueError(f"participant id {self.participant_id!r} is not 32 hex digits")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RejoinTokens:
    """Issues and checks rejoin tokens with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a rejoin key needs at least 16 bytes")
        self._key = key

    @classmethod
    def from_secret_or_folder(cls, secret: str | None, state_dir: Path) -> RejoinTokens:
        """The configured secret, or the key kept in the state folder (created on first use)."""
        if secret:
            return cls(hashlib.sha256(secret.encode()).digest())
        return cls(load_or_create_key(state_dir / KEY_FILE))

    def issue(self, claim: RejoinClaim) -> str:
        payload = json.dumps({"r": claim.room, "p": claim.participant_id, "n": claim.name,
                              "i": round(claim.issued, 3)}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, token: object) -> RejoinClaim:
        """The claim a genuine token holds; RejoinRefused for anything else."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise RejoinRefused("this rejoin link is not valid (malformed token)")
        body, _, sig = token.partition(".")
        try:
            payload, signature = _unb64(body), _unb64(sig)
        except (binascii.Error, ValueError) as exc:
            raise RejoinRefused("this rejoin link is not valid (malformed token)") from exc
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise RejoinRefused("this rejoin link is not valid (it was not issued by this "
                                "server, or it was altered)")
        try:
            d = json.loads(payload)
            return RejoinClaim(str(d["r"]), str(d["p"]), str(d["n"]), float(d["i"]))
        except (ValueError, KeyError, TypeError) as exc:
            # Signed by us but unreadable: a token of an older, incompatible version.
            raise RejoinRefused("this rejoin link is not valid (unknown format)") from exc

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()


def load_or_create_key(path: Path) -> bytes:
    """The key in `path`, or a new random one written there readable by the owner only."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) >= 16:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_bytes(KEY_BYTES)
    try:
        # O_EXCL: two processes starting together agree on whichever key was written first.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) >= 16:
            return key
        raise SettingsError("VIDEOCHAT_STATE_DIR", str(path.parent),
                            f"{path} holds a key shorter than 16 bytes: delete it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(new)
    logger.info("created rejoin key %s", path)
    return new
