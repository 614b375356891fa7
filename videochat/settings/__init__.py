"""Typed settings, read once from the environment and `.streamlit/secrets.toml`.

This is the only module that reads `os.environ`. Environment variables win over the secrets file.
Every bad value raises `SettingsError` naming the variable and the value.
The secrets file's `[auth]` table belongs to Streamlit's `st.login`; it is checked here too, and
its presence switches sign-in on (`require_login`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from videochat.exceptions import SettingsError
from videochat.media.turn import TurnConfig, parse_url_list

DEFAULT_SECRETS_FILE = Path(".streamlit/secrets.toml")
# The secrets.toml table Streamlit's st.login reads (Streamlit reads it itself, we only check it).
AUTH_SECTION = "auth"
DEFAULT_PROVIDER = "default"  # st.login's name for the provider set in [auth] itself
MIN_COOKIE_SECRET = 16  # Streamlit only warns below 14 bytes; a short one lets cookies be forged


@dataclass(frozen=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


@dataclass(frozen=True)
class Settings:
    """Everything configurable; `docs/SETTINGS.md` is generated from these fields."""

    redis_url: str | None = field(
        default=None, metadata={"env": "REDIS_URL", "doc": "Redis URL; unset: embedded Valkey"}
    )
    mongodb_uri: str | None = field(
        default=None,
        metadata={"env": "MONGODB_URI", "doc": "MongoDB URI; unset: embedded SecantusDB"},
    )
    db_name: str = field(
        default="videochat", metadata={"env": "VIDEOCHAT_DB", "doc": "MongoDB database name"}
    )
    state_dir: Path = field(
        default=Path(".videochat"),
        metadata={"env": "VIDEOCHAT_STATE_DIR", "doc": "folder for embedded servers' data"},
    )
    ice_servers: tuple[IceServer, ...] = field(
        default=(),
        metadata={
            "env": "VIDEOCHAT_ICE_SERVERS",
            "doc": "JSON list of {urls, username, credential}; default none (no public STUN)",
        },
    )
    ice_addresses: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "VIDEOCHAT_ICE_ADDRESSES",
            "doc": "comma-separated IPs the server offers as ICE host candidates; empty: all",
        },
    )
    ice_transport_policy: Literal["all", "relay"] = field(
        default="all",
        metadata={"env": "VIDEOCHAT_ICE_TRANSPORT_POLICY", "doc": "'all' or 'relay' (TURN only)"},
    )
    turn_urls: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "VIDEOCHAT_TURN_URLS",
            "doc": "comma-separated turn:/turns: URLs; the first one aiortc can use serves the "
            "server too",
        },
    )
    stun_urls: tuple[str, ...] = field(
        default=(), metadata={"env": "VIDEOCHAT_STUN_URLS", "doc": "comma-separated stun: URLs"}
    )
    turn_secret: str | None = field(
        default=None,
        metadata={
            "env": "VIDEOCHAT_TURN_SECRET",
            "doc": "TURN REST shared secret (coturn static-auth-secret): time-limited credentials",
        },
    )
    turn_ttl_s: int = field(
        default=43_200,
        metadata={
            "env": "VIDEOCHAT_TURN_TTL_S",
            "doc": "lifetime of time-limited TURN credentials in s (60-604800); "
            "must outlast the longest call",
        },
    )
    turn_username: str | None = field(
        default=None,
        metadata={"env": "VIDEOCHAT_TURN_USERNAME", "doc": "static TURN username (no secret)"},
    )
    turn_credential: str | None = field(
        default=None,
        metadata={"env": "VIDEOCHAT_TURN_CREDENTIAL", "doc": "static TURN password (no secret)"},
    )
    dev_mode: bool = field(
        default=True,
        metadata={"env": "VIDEOCHAT_DEV_MODE", "doc": "development mode: no admin token needed"},
    )
    admin_token: str | None = field(
        default=None,
        metadata={"env": "VIDEOCHAT_ADMIN_TOKEN", "doc": "token for the Faults and QA pages"},
    )
    rejoin_secret: str | None = field(
        default=None,
        metadata={
            "env": "VIDEOCHAT_REJOIN_SECRET",
            "doc": "key signing the rejoin tokens tabs hold to get their seat back after a "
            "restart (16+ characters); unset: a random key kept in <state folder>/rejoin.key",
        },
    )
    require_login: bool = field(
        default=False,
        metadata={
            "env": "VIDEOCHAT_REQUIRE_LOGIN",
            "doc": "sign in with st.login (OIDC) before any page; on by itself when "
            ".streamlit/secrets.toml has an [auth] section, 'false' turns it off",
        },
    )
    login_providers: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "VIDEOCHAT_LOGIN_PROVIDERS",
            "doc": "comma-separated providers offered on the sign-in screen, in order: NAME of an "
            "[auth.NAME] section, or 'default' for [auth]'s own client_id; empty: all",
        },
    )
    max_participants: int = field(
        default=6, metadata={"env": "VIDEOCHAT_MAX_PARTICIPANTS", "doc": "people per room (2-16)"}
    )
    reconnect_grace_s: float = field(
        default=30.0,
        metadata={
            "env": "VIDEOCHAT_RECONNECT_GRACE_S",
            "doc": "seconds a dropped participant is shown as reconnecting before 'left'",
        },
    )
    handover_s: float = field(
        default=30.0,
        metadata={
            "env": "VIDEOCHAT_HANDOVER_S",
            "doc": "on a graceful stop, seconds the embedded servers wait for the next app to "
            "adopt them before they stop (0-3600; 0: stop them with the app)",
        },
    )
    metrics_retention_days: int = field(
        default=14,
        metadata={"env": "VIDEOCHAT_METRICS_RETENTION_DAYS", "doc": "days samples are kept"},
    )
    chat_max_length: int = field(
        default=2000, metadata={"env": "VIDEOCHAT_CHAT_MAX_LENGTH", "doc": "characters per message"}
    )
    chat_rate_per_s: int = field(
        default=10,
        metadata={"env": "VIDEOCHAT_CHAT_RATE_PER_S", "doc": "messages per second per participant"},
    )
    capture: tuple[int, int, int] = field(
        default=(640, 480, 20),
        metadata={"env": "VIDEOCHAT_CAPTURE",
                  "doc": "camera capture asked of browsers, WIDTHxHEIGHT@FPS"},
    )
    log_level: str = field(
        default="INFO", metadata={"env": "VIDEOCHAT_LOG_LEVEL", "doc": "logging level"}
    )

    def __post_init__(self) -> None:
        # Cross-field TURN rules fail at load time, naming the variable to fix.
        self.rtc_configuration("settings-check", 0.0)
        if self.require_login and not self.login_providers:
            raise SettingsError("VIDEOCHAT_REQUIRE_LOGIN", self.require_login,
                                "sign-in needs an [auth] section in .streamlit/secrets.toml")

    def turn(self) -> TurnConfig:
        return TurnConfig(
            urls=self.turn_urls,
            username=self.turn_username,
            credential=self.turn_credential,
            shared_secret=self.turn_secret,
            ttl_s=self.turn_ttl_s,
            stun_urls=self.stun_urls,
            relay_only=self.ice_transport_policy == "relay",
        )

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        secrets_file: Path | None = DEFAULT_SECRETS_FILE,
    ) -> Settings:
        """Read settings once: secrets file first, environment over it."""
        raw: dict[str, Any] = {}
        if secrets_file is not None and secrets_file.is_file():
            try:
                raw.update(tomllib.loads(secrets_file.read_text()))
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(str(secrets_file), "<file>", f"not valid TOML: {exc}") from exc
        env = os.environ if environ is None else environ
        for f in fields(cls):
            name = f.metadata["env"]
            if name in env:
                raw[name] = env[name]
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if name not in raw or raw[name] is None or raw[name] == "":
                continue
            kwargs[f.name] = _PARSERS[f.name](name, raw[name])
        _apply_auth_section(raw, kwargs)
        return cls(**kwargs)

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def embedded_mongo(self) -> bool:
        return self.mongodb_uri is None

    def rtc_configuration(
        self, user: str = "anonymous", now: float | None = None
    ) -> dict[str, Any]:
        """What the browser's RTCPeerConnection gets; always an explicit (maybe empty) list.

        TURN credentials are minted for `user` and stay identical within a ttl/4 window, so
        reruns do not change the component's arguments.
        """
        extra = [s.as_dict() for s in self.ice_servers]
        now = time.time() if now is None else now
        return self.turn().rtc_configuration(user, now, extra=extra)

    def server_rtc_configuration(
        self, user: str = "anonymous", now: float | None = None
    ) -> dict[str, Any]:
        """For webrtc_streamer(server_rtc_configuration=...): the one STUN and one TURN URL
        aiortc uses (streamlit-webrtc hands only iceServers on to aiortc)."""
        extra = [s.as_dict() for s in self.ice_servers]
        now = time.time() if now is None else now
        return {"iceServers": self.turn().server_ice_servers(user, now, extra=extra)}

    def check_admin(self, token: str | None) -> bool:
        if self.dev_mode:
            return True
        return (self.admin_token is not None and token is not None
                and hmac.compare_digest(token.encode(), self.admin_token.encode()))

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting."""
        out = []
        for f in fields(cls):
            default = f.default if f.default is not None else "unset"
            out.append((f.metadata["env"], repr(default) if default != "unset" else "unset",
                        f.metadata["doc"]))
        return out


def _secret(name: str, value: Any, min_length: int) -> str | None:
    text = _str(name, value).strip()
    if text and len(text) < min_length:
        # Never echo a secret, not even a short one.
        raise SettingsError(name, f"<{len(text)} characters>",
                            f"must be at least {min_length} characters (or unset)")
    return text or None


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SettingsError(name, value, "must be a string")
    return value.strip()


def _url(schemes: tuple[str, ...]) -> Any:
    def parse(name: str, value: Any) -> str:
        text = _str(name, value)
        if not text.startswith(tuple(s + "://" for s in schemes)):
            raise SettingsError(name, value, f"must start with one of {', '.join(schemes)}://")
        return text

    return parse


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(name, value, "must be true/false (1/0, yes/no, on/off)")


def _int(lo: int, hi: int) -> Any:
    def parse(name: str, value: Any) -> int:
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise SettingsError(name, value, "must be a whole number") from None
        if not lo <= n <= hi:
            raise SettingsError(name, value, f"must be between {lo} and {hi}")
        return n

    return parse


def _float(lo: float, hi: float) -> Any:
    def parse(name: str, value: Any) -> float:
        try:
            n = float(value)
        except (TypeError, ValueError):
            raise SettingsError(name, value, "must be a number") from None
        if not lo <= n <= hi:
            raise SettingsError(name, value, f"must be between {lo:g} and {hi:g}")
        return n

    return parse


def _ice_servers(name: str, value: Any) -> tuple[IceServer, ...]:
    items = value
    if isinstance(value, str):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SettingsError(name, value, f"must be a JSON list: {exc.msg}") from None
    if not isinstance(items, list):
        raise SettingsError(name, value, "must be a list of {urls, username, credential}")
    out = []
    for item in items:
        if not isinstance(item, dict) or "urls" not in item:
            raise SettingsError(name, item, "each entry needs 'urls'")
        urls = item["urls"]
        urls = [urls] if isinstance(urls, str) else urls
        if not urls or not all(
            isinstance(u, str) and u.split(":", 1)[0] in ("stun", "turn", "turns") for u in urls
        ):
            raise SettingsError(name, item["urls"], "urls must be stun:, turn: or turns: URLs")
        out.append(IceServer(tuple(urls), item.get("username"), item.get("credential")))
    return tuple(out)


def _ice_addresses(name: str, value: Any) -> tuple[str, ...]:
    parts = value if isinstance(value, list) else str(value).split(",")
    out = []
    for part in (str(p).strip() for p in parts):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise SettingsError(name, part, "must be IP addresses separated by commas") from None
    return tuple(out)


def _policy(name: str, value: Any) -> str:
    text = _str(name, value).lower()
    if text not in ("all", "relay"):
        raise SettingsError(name, value, "must be 'all' or 'relay'")
    return text


def _capture(name: str, value: Any) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d{2,4})x(\d{2,4})@(\d{1,2})\s*", str(value))
    if not m:
        raise SettingsError(name, value, "must look like 640x480@20 (WIDTHxHEIGHT@FPS)")
    w, h, fps = (int(g) for g in m.groups())
    if not (64 <= w <= 3840 and 48 <= h <= 2160 and 1 <= fps <= 60):
        raise SettingsError(name, value, "needs 64-3840 x 48-2160 pixels at 1-60 fps")
    return w, h, fps


def _level(name: str, value: Any) -> str:
    text = _str(name, value).upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(name, value, "must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return text


def _db_name(name: str, value: Any) -> str:
    text = _str(name, value)
    if not text or any(c in text for c in '/\\. "$') or len(text) > 60:
        raise SettingsError(name, value, "must be 1-60 characters without / \\ . space \" $")
    return text


def _provider_names(name: str, value: Any) -> tuple[str, ...]:
    parts = value if isinstance(value, list) else str(value).split(",")
    out: list[str] = []
    for part in (str(p).strip() for p in parts):
        if not part:
            continue
        if "_" in part or not re.fullmatch(r"[A-Za-z0-9-]{1,40}", part):
            # Streamlit's st.login cannot route a provider name containing "_".
            raise SettingsError(name, part, "provider names are 1-40 letters, digits or '-' "
                                "(st.login cannot use '_')")
        if part not in out:
            out.append(part)
    return tuple(out)


def _absolute_url(name: str, value: Any, rule: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(name, value, f"required: {rule}")
    # Streamlit fills "{port}" in itself; any port checks the shape.
    parts = urlsplit(value.strip().replace("{port}", "8501"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(name, value, f"must be an absolute http(s) URL: {rule}")
    return value.strip()


def _check_provider(where: str, section: Mapping[str, Any]) -> None:
    for key in ("client_id", "client_secret"):
        value = section.get(key)
        if not isinstance(value, str) or not value.strip():
            # Never echo a client secret, not even a wrong one.
            shown = value if key == "client_id" or not value else "<hidden>"
            raise SettingsError(f"{where} {key}", shown,
                                "required: the value your identity provider issued")
    _absolute_url(f"{where} server_metadata_url", section.get("server_metadata_url"),
                  "the provider's .well-known/openid-configuration URL")


def auth_providers(section: Any) -> tuple[str, ...]:
    """Check the `[auth]` table of secrets.toml as `st.login` will read it; its provider names.

    `default` stands for a provider configured in `[auth]` itself; `NAME` for `[auth.NAME]`.
    Errors name the key, e.g. `[auth.google] client_id`, and never echo a secret.
    """
    where = f"[{AUTH_SECTION}]"
    if not isinstance(section, Mapping):
        raise SettingsError(where, section, "must be a TOML table ([auth] section)")
    redirect = _absolute_url(
        f"{where} redirect_uri", section.get("redirect_uri"),
        "this app's address followed by /oauth2callback, e.g. "
        "https://chat.example.org/oauth2callback",
    )
    if not urlsplit(redirect).path.endswith("/oauth2callback"):
        raise SettingsError(f"{where} redirect_uri", redirect, "must end with /oauth2callback")
    secret = section.get("cookie_secret")
    if not isinstance(secret, str) or len(secret.strip()) < MIN_COOKIE_SECRET:
        shown = (f"<{len(secret)} characters>" if isinstance(secret, str)
                 else None if secret is None else f"<{type(secret).__name__}>")
        raise SettingsError(
            f"{where} cookie_secret", shown,
            f"must be a random string of at least {MIN_COOKIE_SECRET} characters, e.g. from "
            "python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    providers: list[str] = []
    named = {k: v for k, v in section.items() if isinstance(v, Mapping) and k != "client_kwargs"}
    if DEFAULT_PROVIDER not in named and any(
        k in section for k in ("client_id", "client_secret", "server_metadata_url")
    ):
        _check_provider(where, section)
        providers.append(DEFAULT_PROVIDER)
    for name, sub in named.items():
        _provider_names(f"[{AUTH_SECTION}.{name}]", name)
        _check_provider(f"[{AUTH_SECTION}.{name}]", sub)
        providers.append(name)
    if not providers:
        raise SettingsError(
            where, "<no provider>", "needs client_id, client_secret and server_metadata_url, "
            "in [auth] itself or in an [auth.NAME] section",
        )
    return tuple(providers)


def _apply_auth_section(raw: Mapping[str, Any], kwargs: dict[str, Any]) -> None:
    """Derive the sign-in settings from secrets.toml's [auth] section (absent: sign-in off)."""
    if kwargs.get("require_login") is False:
        return  # explicitly off: an [auth] section kept for other uses is not our business
    section = raw.get(AUTH_SECTION)
    providers = auth_providers(section) if section is not None else ()
    wanted: tuple[str, ...] = kwargs.get("login_providers", ())
    unknown = [p for p in wanted if p not in providers]
    if unknown:
        known = ", ".join(providers) or "none: no [auth] section in .streamlit/secrets.toml"
        raise SettingsError("VIDEOCHAT_LOGIN_PROVIDERS", unknown[0],
                            f"not a configured provider (configured: {known})")
    if not wanted:
        kwargs["login_providers"] = providers
    if "require_login" not in kwargs:
        kwargs["require_login"] = bool(providers)
    elif not providers:
        raise SettingsError("VIDEOCHAT_REQUIRE_LOGIN", raw.get("VIDEOCHAT_REQUIRE_LOGIN"),
                            "sign-in needs an [auth] section in .streamlit/secrets.toml")


_PARSERS: dict[str, Any] = {
    "redis_url": _url(("redis", "rediss", "unix")),
    "mongodb_uri": _url(("mongodb", "mongodb+srv")),
    "db_name": _db_name,
    "state_dir": lambda n, v: Path(_str(n, v)).expanduser(),
    "ice_servers": _ice_servers,
    "ice_addresses": _ice_addresses,
    "ice_transport_policy": _policy,
    "turn_urls": lambda n, v: parse_url_list(n, v, ("turn", "turns")),
    "stun_urls": lambda n, v: parse_url_list(n, v, ("stun",)),
    "turn_secret": lambda n, v: _str(n, v) or None,
    "turn_ttl_s": _int(60, 604_800),
    "turn_username": lambda n, v: _str(n, v) or None,
    "turn_credential": lambda n, v: _str(n, v) or None,
    "dev_mode": _bool,
    "admin_token": lambda n, v: _str(n, v) or None,
    "rejoin_secret": lambda n, v: _secret(n, v, 16),
    "require_login": _bool,
    "login_providers": _provider_names,
    "max_participants": _int(2, 16),
    "reconnect_grace_s": _float(0, 600),
    "handover_s": _float(0, 3600),
    "metrics_retention_days": _int(1, 3650),
    "chat_max_length": _int(1, 100_000),
    "chat_rate_per_s": _int(1, 1000),
    "capture": _capture,
    "log_level": _level,
}
