"""TURN servers: static or time-limited credentials, ICE server lists, a real Allocate check.

Time-limited credentials follow the TURN REST API (draft-uberti-behave-turn-rest, what coturn's
`--use-auth-secret` implements): username `"{expiry_unix}:{user}"`, password
`base64(HMAC-SHA1(shared_secret, username))`. The server needs only the shared secret; a leaked
credential stops opening new allocations at its expiry. An allocation made before the expiry
keeps being refreshed after it (coturn 4.6.1, pinned by a test), so the lifetime bounds how long
a page may wait before (re)connecting, not how long a call may last.

Where the lists go:
- the browser gets every URL (`rtc_configuration`); `iceTransportPolicy: "relay"` makes it gather
  only relay candidates, so every candidate pair has a TURN relay at the browser's end and all media
  crosses the TURN server, whatever the server side offers;
- aiortc keeps only the first STUN URL and the first TURN URL it can use (`turn:` over udp/tcp,
  `turns:` over tcp) and skips the rest silently. `TurnConfig` therefore puts the first usable TURN
  URL first, and `server_ice_servers` hands aiortc exactly the two entries it will use, so what the
  server does is what the operator reads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aioice import stun
from aioice.turn import create_turn_endpoint

from videochat.exceptions import SettingsError, ValidationError

logger = logging.getLogger(__name__)

TTL_MIN_S = 60
TTL_MAX_S = 7 * 86_400
DEFAULT_TTL_S = 12 * 3600
# Credentials are minted on a grid of ttl/ROTATE_DIVISOR seconds, so every Streamlit rerun in the
# same window hands the component identical arguments (a changed rtc_configuration restarts the
# browser's connection set-up); each credential still has at least 3/4 of its lifetime left.
ROTATE_DIVISOR = 4

_URL_RE = re.compile(
    r"^(?P<scheme>stuns?|turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)"
    r"(?::(?P<port>\d{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?$"
)


@dataclass(frozen=True)
class IceUrl:
    """One parsed stun:/turn: URL (RFC 7064 / RFC 7065)."""

    url: str
    scheme: Literal["stun", "stuns", "turn", "turns"]
    host: str
    port: int
    transport: Literal["udp", "tcp"]

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")

    @property
    def aiortc_usable(self) -> bool:
        """What aiortc's `connection_kwargs` accepts; anything else it skips without a word."""
        if self.scheme == "turn":
            return True
        if self.scheme == "turns":
            return self.transport == "tcp"
        return self.scheme == "stun"


def parse_ice_url(url: str, what: str = "ICE server URL") -> IceUrl:
    """Parse and check a stun:/stuns:/turn:/turns: URL; `what` names the setting in errors."""
    match = _URL_RE.fullmatch(url.strip()) if isinstance(url, str) else None
    if match is None:
        raise SettingsError(
            what, url, "must look like turn:HOST[:PORT][?transport=udp|tcp], turns:HOST[:PORT] "
            "or stun:HOST[:PORT]"
        )
    scheme = match["scheme"]
    secure = scheme.endswith("s")
    port = int(match["port"]) if match["port"] else (5349 if secure else 3478)
    if not 1 <= port <= 65535:
        raise SettingsError(what, url, "port must be between 1 and 65535")
    transport = match["transport"] or ("tcp" if secure else "udp")
    if scheme.startswith("stun") and match["transport"]:
        raise SettingsError(what, url, "stun: URLs take no ?transport=")
    if scheme == "turns" and transport == "udp":
        raise SettingsError(what, url, "turns: over udp (DTLS) is not supported; use tcp")
    host = match["host"].strip("[]")
    return IceUrl(url.strip(), scheme, host, port, transport)  # type: ignore[arg-type]


def parse_url_list(
    name: str, value: Any, schemes: tuple[str, ...] = ("turn", "turns")
) -> tuple[str, ...]:
    """Settings parser: a comma-separated string (or list) of URLs with one of `schemes`."""
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    out = []
    for part in (str(p).strip() for p in parts):
        if not part:
            continue
        parsed = parse_ice_url(part, name)
        if parsed.scheme not in schemes:
            raise SettingsError(name, part, f"must be {' or '.join(s + ':' for s in schemes)} URLs")
        out.append(parsed.url)
    return tuple(out)


def rest_credentials(secret: str, user: str, expiry_unix: int) -> tuple[str, str]:
    """TURN REST API credential valid until `expiry_unix`: (username, password)."""
    username = f"{expiry_unix}:{user}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def _check_user(user: str) -> str:
    if not isinstance(user, str) or not user or len(user) > 128:
        raise ValidationError("TURN user", user, "must be 1-128 characters")
    if any(ord(c) < 32 or c == "\x7f" for c in user):
        raise ValidationError("TURN user", user, "must not contain control characters")
    return user


@dataclass(frozen=True)
class TurnConfig:
    """TURN (and optional STUN) servers with either static credentials or a REST shared secret.

    Errors name the settings variables, since that is where an operator fixes them.
    """

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None
    shared_secret: str | None = None
    ttl_s: int = DEFAULT_TTL_S
    stun_urls: tuple[str, ...] = ()
    relay_only: bool = False
    _parsed: tuple[IceUrl, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = [parse_ice_url(u, "VIDEOCHAT_TURN_URLS") for u in self.urls]
        for p in parsed:
            if not p.is_turn:
                raise SettingsError("VIDEOCHAT_TURN_URLS", p.url, "must be turn: or turns: URLs")
        for u in self.stun_urls:
            if parse_ice_url(u, "VIDEOCHAT_STUN_URLS").is_turn:
                raise SettingsError("VIDEOCHAT_STUN_URLS", u, "must be stun: URLs")
        static = self.username is not None or self.credential is not None
        if parsed:
            if static and self.shared_secret is not None:
                raise SettingsError(
                    "VIDEOCHAT_TURN_SECRET", "<hidden>",
                    "set either a shared secret or VIDEOCHAT_TURN_USERNAME/CREDENTIAL, not both",
                )
            if static and not (self.username and self.credential):
                raise SettingsError(
                    "VIDEOCHAT_TURN_USERNAME", self.username,
                    "static TURN credentials need both VIDEOCHAT_TURN_USERNAME and "
                    "VIDEOCHAT_TURN_CREDENTIAL",
                )
            if not static and not self.shared_secret:
                raise SettingsError(
                    "VIDEOCHAT_TURN_URLS", ",".join(self.urls),
                    "TURN needs VIDEOCHAT_TURN_SECRET (time-limited credentials) or "
                    "VIDEOCHAT_TURN_USERNAME and VIDEOCHAT_TURN_CREDENTIAL",
                )
        elif static or self.shared_secret:
            raise SettingsError("VIDEOCHAT_TURN_URLS", "", "TURN credentials given without URLs")
        if isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, int) or not (
            TTL_MIN_S <= self.ttl_s <= TTL_MAX_S
        ):
            raise SettingsError(
                "VIDEOCHAT_TURN_TTL_S", self.ttl_s,
                f"must be a whole number of seconds between {TTL_MIN_S} and {TTL_MAX_S}",
            )
        # A stable sort: usable-by-aiortc first, otherwise the operator's order.
        ordered = sorted(parsed, key=lambda p: not p.aiortc_usable)
        object.__setattr__(self, "urls", tuple(p.url for p in ordered))
        object.__setattr__(self, "_parsed", tuple(ordered))

    @property
    def time_limited(self) -> bool:
        return self.shared_secret is not None

    @property
    def parsed_urls(self) -> tuple[IceUrl, ...]:
        return self._parsed

    def credentials_for(self, user: str, now: float) -> tuple[str, str] | None:
        """(username, password) for `user` at `now` (unix seconds); None when there is no TURN."""
        if not self.urls:
            return None
        if self.shared_secret is None:
            assert self.username is not None and self.credential is not None
            return self.username, self.credential
        step = max(1, self.ttl_s // ROTATE_DIVISOR)
        expiry = int(now) // step * step + self.ttl_s
        return rest_credentials(self.shared_secret, _check_user(user), expiry)

    def ice_servers_for(self, user: str, now: float) -> list[dict[str, Any]]:
        """RTCIceServer dicts for the browser and aiortc: STUN first, then TURN with credentials.

        Identical for every `now` within one rotation window (ttl/4), so reruns do not change it.
        """
        out: list[dict[str, Any]] = []
        if self.stun_urls:
            out.append({"urls": list(self.stun_urls)})
        creds = self.credentials_for(user, now)
        if creds is not None:
            out.append({"urls": list(self.urls), "username": creds[0], "credential": creds[1]})
        return out

    def rtc_configuration(
        self, user: str, now: float, extra: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """The browser's RTCPeerConnection configuration (`rtc_configuration=` of webrtc_streamer).

        `extra` (e.g. `Settings.ice_servers` as dicts) comes after ours, so aiortc still picks ours.
        """
        servers = [*self.ice_servers_for(user, now), *extra]
        cfg: dict[str, Any] = {"iceServers": servers}
        if self.relay_only:
            validate_relay_only(servers)
            cfg["iceTransportPolicy"] = "relay"
        return cfg

    def server_ice_servers(
        self, user: str, now: float, extra: Sequence[dict[str, Any]] = ()
    ) -> list[dict[str, Any]]:
        """Exactly what aiortc will use: the first STUN URL and the first usable TURN URL."""
        return aiortc_subset([*self.ice_servers_for(user, now), *extra])


def validate_relay_only(ice_servers: Sequence[dict[str, Any]]) -> None:
    """Relay-only with no TURN server gathers no candidate at all: refuse that configuration."""
    for server in ice_servers:
        urls = server.get("urls", [])
        for url in [urls] if isinstance(urls, str) else urls:
            if isinstance(url, str) and url.startswith(("turn:", "turns:")):
                return
    raise SettingsError(
        "VIDEOCHAT_ICE_TRANSPORT_POLICY", "relay",
        "relay-only needs a TURN server (VIDEOCHAT_TURN_URLS or a turn: entry in "
        "VIDEOCHAT_ICE_SERVERS)",
    )


def aiortc_subset(ice_servers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reduce RTCIceServer dicts to the one STUN and one TURN URL aiortc would pick."""
    stun_entry: dict[str, Any] | None = None
    turn_entry: dict[str, Any] | None = None
    for server in ice_servers:
        urls = server.get("urls", [])
        for url in [urls] if isinstance(urls, str) else urls:
            try:
                parsed = parse_ice_url(url)
            except SettingsError:
                continue
            if not parsed.aiortc_usable:
                continue
            if parsed.is_turn and turn_entry is None:
                turn_entry = {**server, "urls": [url]}
            elif not parsed.is_turn and stun_entry is None:
                stun_entry = {"urls": [url]}
    return [e for e in (stun_entry, turn_entry) if e is not None]


def aiortc_configuration(ice_servers: Sequence[dict[str, Any]], relay_only: bool = False) -> Any:
    """An `aiortc.RTCConfiguration` (aiortc >= 1.10 honours iceTransportPolicy=RELAY itself)."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in aiortc_subset(ice_servers)
    ]
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


# --- the pre-call check -------------------------------------------------------------------------

CheckKind = Literal[
    "ok", "refused", "unreachable", "timeout", "bad_url", "relay_failed", "error"
]

_REFUSALS: dict[int, str] = {
    401: "TURN server refused the credentials (401 Unauthorized): wrong or expired "
    "username/password",
    403: "TURN server forbids this allocation (403 Forbidden): check its denied-peer and "
    "user rules",
    437: "TURN server reports an allocation mismatch (437): retry",
    441: "TURN server refused the credentials (441 Wrong Credentials)",
    486: "TURN server refused: allocation quota reached for this user (486)",
    508: "TURN server is out of relay capacity (508 Insufficient Capacity)",
}


@dataclass(frozen=True)
class TurnCheck:
    """The plain verdict of one TURN check: Allocate, then (optionally) relay a datagram."""

    url: str
    kind: CheckKind
    message: str
    elapsed_s: float
    relayed_address: tuple[str, int] | None = None
    mapped_address: tuple[str, int] | None = None
    error_code: int | None = None
    relay_s: float | None = None  # both directions relayed between two allocations, seconds

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class _Sink(asyncio.DatagramProtocol):
    """The relayed side of one allocation: what arrived, what failed, when it closed."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.received: asyncio.Future[bytes] = loop.create_future()
        self.error: Exception | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not self.received.done():
            self.received.set_result(data)

    def error_received(self, exc: Exception) -> None:
        self.error = exc

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _refusal(exc: stun.TransactionFailed, have_credentials: bool) -> tuple[str, int]:
    code, reason = exc.response.attributes.get("ERROR-CODE", (0, "no error code"))
    if code == 401 and not have_credentials:
        return "TURN server requires credentials (401 Unauthorized) but none were given", code
    return _REFUSALS.get(code, f"TURN server rejected the allocation ({code} {reason})"), code


async def _allocate(
    target: IceUrl, username: str | None, credential: str | None
) -> tuple[Any, _Sink]:
    return await create_turn_endpoint(
        _Sink,
        server_addr=(target.host, target.port),
        username=username,
        password=credential,
        ssl=target.scheme == "turns",
        transport=target.transport,
    )


async def _release(transport: Any, sink: _Sink, url: str) -> None:
    transport.close()  # deletes the allocation; the sink hears connection_lost when it is gone
    try:
        await asyncio.wait_for(asyncio.shield(sink.closed), 2.0)
    except TimeoutError:
        logger.info("TURN allocation at %s not confirmed deleted; it will expire", url)


async def _relay_probe(
    a: tuple[Any, _Sink], b: tuple[Any, _Sink], timeout: float
) -> float | str:
    """Relay one datagram each way between two allocations; seconds taken, or why it failed.

    Each side sends until it hears the other: the first send installs the sender's permission
    (aioice binds a channel), without which the server drops what the other side relays to it.
    """
    (ta, sa), (tb, sb) = a, b
    addr_a, addr_b = ta.get_extra_info("sockname"), tb.get_extra_info("sockname")
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if not sb.received.done():
            ta.sendto(b"videochat-probe-a", addr_b)
        if not sa.received.done():
            tb.sendto(b"videochat-probe-b", addr_a)
        pending = [f for f in (sa.received, sb.received) if not f.done()]
        await asyncio.wait(pending, timeout=0.1)  # resend every 100 ms until both arrived
        for sink in (sa, sb):
            if sink.error is not None:
                exc = sink.error
                if isinstance(exc, stun.TransactionFailed):
                    code, reason = exc.response.attributes.get("ERROR-CODE", (0, ""))
                    return (f"TURN server allocated a relay but refused to relay to a peer "
                            f"({code} {reason}): check its denied-peer-ip / allowed-peer-ip rules")
                return f"TURN server allocated a relay but relaying failed: {exc}"
        if sa.received.done() and sb.received.done():
            return time.monotonic() - start
    return (f"TURN server allocated a relay but relayed nothing within {timeout:g} s: check its "
            "relay-ip / external-ip settings and that its relay ports are open")


async def check_turn(
    url: str,
    username: str | None,
    credential: str | None,
    timeout: float = 5.0,
    relay_probe: bool = True,
) -> TurnCheck:
    """Really allocate a relay on the TURN server at `url` and say plainly how it went.

    With `relay_probe`, a second allocation is made and a datagram relayed each way between the
    two, which catches servers that allocate but cannot relay (wrong external/relay address,
    closed relay ports, peer rules). Allocations are deleted afterwards.
    """
    start = time.monotonic()

    def done(kind: CheckKind, message: str, **kw: Any) -> TurnCheck:
        return TurnCheck(url, kind, message, round(time.monotonic() - start, 4), **kw)

    try:
        target = parse_ice_url(url, "TURN URL")
    except SettingsError as exc:
        return done("bad_url", str(exc))
    if not target.is_turn:
        return done("bad_url", f"{url!r} is not a turn: or turns: URL")
    where = f"{target.host}:{target.port} over {target.transport}" + (
        " with TLS" if target.scheme == "turns" else ""
    )
    try:
        first = await asyncio.wait_for(_allocate(target, username, credential), timeout)
    except stun.TransactionFailed as exc:
        message, code = _refusal(exc, bool(username and credential))
        return done("refused", message, error_code=code)
    except (TimeoutError, stun.TransactionTimeout):
        return done(
            "timeout",
            f"TURN server unreachable: no answer from {where} within {timeout:g} s "
            "(wrong address or port, server down, or blocked by a firewall)",
        )
    except socket.gaierror:
        return done("unreachable", f"TURN server unreachable: cannot resolve {target.host!r}")
    except ssl.SSLError as exc:
        return done("unreachable", f"TLS handshake with the TURN server {where} failed: {exc}")
    except ConnectionRefusedError:
        return done("unreachable", f"TURN server unreachable: connection refused by {where}")
    except (OSError, ConnectionError) as exc:
        return done("unreachable", f"TURN server unreachable at {where}: {exc}")
    relayed = first[0].get_extra_info("sockname")
    mapped = first[0].get_extra_info("related_address")
    info: dict[str, Any] = {
        "relayed_address": tuple(relayed),
        "mapped_address": tuple(mapped) if mapped else None,
    }
    allocations = [first]
    try:
        relay_s: float | None = None
        if relay_probe:
            remaining = max(0.5, timeout - (time.monotonic() - start))
            try:
                second = await asyncio.wait_for(
                    _allocate(target, username, credential), remaining
                )
            except (stun.TransactionError, TimeoutError, OSError) as exc:
                return done("error", f"TURN server allocated one relay but not a second: {exc}",
                            **info)
            allocations.append(second)
            probe = await _relay_probe(first, second, remaining)
            if isinstance(probe, str):
                return done("relay_failed", probe, **info)
            relay_s = round(probe, 4)
        result = done(
            "ok",
            f"TURN server reachable: relay allocated at {relayed[0]}:{relayed[1]}"
            + (f", relays both ways ({relay_s * 1000:.0f} ms)" if relay_s is not None else ""),
            relay_s=relay_s,
            **info,
        )
        logger.info("TURN check %s: %s in %.3f s", url, result.kind, result.elapsed_s)
        return result
    finally:
        await asyncio.gather(*(_release(t, s, url) for t, s in allocations))


async def check_config(
    config: TurnConfig, user: str, now: float, timeout: float = 5.0, relay_probe: bool = True
) -> list[TurnCheck]:
    """Check every TURN URL of `config` concurrently with the credentials a caller would get."""
    creds = config.credentials_for(user, now)
    if creds is None:
        return []
    return list(
        await asyncio.gather(
            *(check_turn(u, creds[0], creds[1], timeout, relay_probe) for u in config.urls)
        )
    )


def check_config_blocking(
    config: TurnConfig, user: str, now: float, timeout: float = 5.0, relay_probe: bool = True
) -> list[TurnCheck]:
    """`check_config` for a thread without an event loop (a Streamlit script run)."""
    return asyncio.run(check_config(config, user, now, timeout, relay_probe))


# --- ICE gathering: what candidates a side can offer ---------------------------------------------

CandidateType = Literal["host", "srflx", "prflx", "relay"]
_CANDIDATE_TYPES: tuple[CandidateType, ...] = ("host", "srflx", "prflx", "relay")
_TYP_RE = re.compile(r"\btyp (host|srflx|prflx|relay)\b")


def candidate_types(candidates: Sequence[str]) -> dict[str, int]:
    """Count candidate types in ICE candidate strings (`candidate:...` or SDP `a=candidate:`),
    e.g. those a browser reports from `onicecandidate`; unparsable lines are ignored."""
    counts: dict[str, int] = dict.fromkeys(_CANDIDATE_TYPES, 0)
    for line in candidates:
        match = _TYP_RE.search(line)
        if match:
            counts[match[1]] += 1
    return counts


@dataclass(frozen=True)
class IceVerdict:
    level: Literal["good", "ok", "warning", "blocked"]
    message: str


def ice_verdict(types: dict[str, int], relay_only: bool, turn_configured: bool) -> IceVerdict:
    """A plain sentence on what the gathered candidate types mean for joining a call."""
    relay, srflx = types.get("relay", 0), types.get("srflx", 0)
    host = types.get("host", 0) + types.get("prflx", 0)
    if relay:
        return IceVerdict("good", "TURN relay available: the call can connect even through "
                          "strict firewalls")
    if relay_only:
        return IceVerdict("blocked", "relay-only mode but no TURN relay was obtained (server "
                          "unreachable or credentials refused): the call cannot connect")
    no_relay = (" TURN is configured but gave no relay: see the TURN check." if turn_configured
                else " No TURN server is configured, so strict firewalls will block the call.")
    if srflx:
        return IceVerdict("ok", "public address found: direct connections should work." + no_relay)
    if host:
        return IceVerdict("warning", "only local addresses found: calls work on the same network "
                          "only." + no_relay)
    return IceVerdict("blocked", "no ICE candidates at all: no usable network interface")


@dataclass(frozen=True)
class GatherCheck:
    """The server side's own ICE gathering, as aiortc would do it with the same servers."""

    elapsed_s: float
    types: dict[str, int]
    candidates: tuple[str, ...]


async def gather_check(
    ice_servers: Sequence[dict[str, Any]], relay_only: bool = False
) -> GatherCheck:
    """Gather candidates with aioice using aiortc's own reading of `ice_servers`.

    aioice drops STUN/TURN failures silently (5 s budget); run `check_turn` to learn why a relay
    is missing.
    """
    from aioice import Connection, TransportPolicy
    from aiortc.rtcicetransport import connection_kwargs

    config = aiortc_configuration(ice_servers, relay_only)
    connection = Connection(
        ice_controlling=True,
        transport_policy=TransportPolicy.RELAY if relay_only else TransportPolicy.ALL,
        **connection_kwargs(config.iceServers or []),
    )
    start = time.monotonic()
    try:
        await connection.gather_candidates()
        elapsed = time.monotonic() - start
        lines = tuple(c.to_sdp() for c in connection.local_candidates)
    finally:
        await connection.close()
    return GatherCheck(round(elapsed, 4), candidate_types(lines), lines)

