"""TURN against a real coturn on loopback: credentials, the Allocate check, a relay-only call."""

from __future__ import annotations

import asyncio
import base64
import fractions
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np
import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from aiortc import RTCPeerConnection, VideoStreamTrack
from av import VideoFrame
from turnserver import CoturnProcess, coturn_fixture

from videochat.exceptions import SettingsError, ValidationError
from videochat.media.turn import (
    TurnConfig,
    aiortc_configuration,
    aiortc_subset,
    candidate_types,
    check_config,
    check_turn,
    gather_check,
    ice_verdict,
    parse_ice_url,
    parse_url_list,
    rest_credentials,
)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoturnProcess]:
    yield from coturn_fixture(tmp_path_factory)


def _expected_password(secret: str, username: str) -> str:
    # Written out independently of videochat.media.turn, from the TURN REST API draft.
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


# --- credentials and configuration (no server) ------------------------------------------------


def test_rest_credentials_match_an_independent_vector() -> None:
    username, password = rest_credentials("north-wind", "alice", 1_700_000_000)
    assert username == "1700000000:alice"
    assert password == _expected_password("north-wind", "1700000000:alice")
    # A fixed vector, so a change of algorithm (e.g. to SHA-256) is caught even if both sides move.
    assert password == "Oko4dt8u/EbTRjRUJWQDFm/zTCc="  # from `openssl dgst -sha1 -hmac`


def test_time_limited_credentials_expire_after_ttl_on_a_stable_grid() -> None:
    cfg = TurnConfig(urls=("turn:turn.example.org",), shared_secret="s", ttl_s=3600)
    now = 1_700_000_100.7
    first = cfg.ice_servers_for("bob", now)
    # The same window gives identical arguments, so a Streamlit rerun changes nothing.
    assert cfg.ice_servers_for("bob", now + 800) == first
    (turn,) = first
    expiry = int(turn["username"].split(":", 1)[0])
    assert now + 3600 * 3 / 4 <= expiry <= now + 3600
    assert turn["credential"] == _expected_password("s", turn["username"])
    assert cfg.ice_servers_for("bob", now + 900)[0]["username"] != turn["username"]


def test_static_credentials_and_ordering_for_aiortc() -> None:
    cfg = TurnConfig(
        urls=("turns:t.example.org:443?transport=tcp", "turn:t.example.org?transport=tcp",
              "turn:t.example.org"),
        username="u",
        credential="p",
        stun_urls=("stun:t.example.org",),
    )
    servers = cfg.ice_servers_for("anyone", 0)
    assert servers[0] == {"urls": ["stun:t.example.org"]}
    assert servers[1]["username"] == "u" and servers[1]["credential"] == "p"
    # aiortc takes the first usable TURN URL; the operator's order stays as given otherwise.
    assert servers[1]["urls"][0] == "turns:t.example.org:443?transport=tcp"
    assert cfg.server_ice_servers("anyone", 0) == [
        {"urls": ["stun:t.example.org"]},
        {"urls": ["turns:t.example.org:443?transport=tcp"], "username": "u", "credential": "p"},
    ]


def test_relay_only_reaches_the_browser_configuration() -> None:
    cfg = TurnConfig(urls=("turn:t.example.org",), shared_secret="s", relay_only=True)
    rtc = cfg.rtc_configuration("u", 0, extra=[{"urls": ["stun:other.example.org"]}])
    assert rtc["iceTransportPolicy"] == "relay"
    assert rtc["iceServers"][-1] == {"urls": ["stun:other.example.org"]}
    assert "iceTransportPolicy" not in TurnConfig(urls=("turn:x",), shared_secret="s") \
        .rtc_configuration("u", 0)
    # Relay-only needs a TURN server somewhere: ours or one among the static entries.
    no_turn = TurnConfig(urls=(), relay_only=True)
    with pytest.raises(SettingsError, match="relay-only needs a TURN server") as err:
        no_turn.rtc_configuration("u", 0, extra=[{"urls": ["stun:s.example.org"]}])
    assert err.value.name == "VIDEOCHAT_ICE_TRANSPORT_POLICY"
    static_turn = [{"urls": "turn:static.example.org", "username": "a", "credential": "b"}]
    assert no_turn.rtc_configuration("u", 0, extra=static_turn)["iceServers"] == static_turn


@pytest.mark.parametrize(
    ("kwargs", "variable", "fragment"),
    [
        ({"urls": ("http://t.example.org",)}, "VIDEOCHAT_TURN_URLS", "turn:HOST"),
        ({"urls": ("stun:t.example.org",), "shared_secret": "s"}, "VIDEOCHAT_TURN_URLS", "turn:"),
        ({"urls": ("turn:t",)}, "VIDEOCHAT_TURN_URLS", "VIDEOCHAT_TURN_SECRET"),
        ({"urls": ("turn:t",), "username": "u"}, "VIDEOCHAT_TURN_USERNAME", "both"),
        ({"urls": ("turn:t",), "username": "u", "credential": "p", "shared_secret": "s"},
         "VIDEOCHAT_TURN_SECRET", "not both"),
        ({"urls": (), "shared_secret": "s"}, "VIDEOCHAT_TURN_URLS", "without URLs"),
        ({"urls": ("turn:t",), "shared_secret": "s", "ttl_s": 5}, "VIDEOCHAT_TURN_TTL_S", "60"),
        ({"urls": ("turns:t?transport=udp",), "shared_secret": "s"}, "VIDEOCHAT_TURN_URLS",
         "tcp"),
    ],
)
def test_bad_configuration_names_the_setting(
    kwargs: dict[str, Any], variable: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as err:
        TurnConfig(**kwargs)
    assert err.value.name == variable
    assert fragment in str(err.value)
    assert "s3cr" not in str(err.value)


def test_url_parsing() -> None:
    url = parse_ice_url("turn:[::1]:3479?transport=tcp")
    assert (url.host, url.port, url.transport) == ("::1", 3479, "tcp")
    assert parse_ice_url("turns:t.example.org").port == 5349
    assert parse_url_list("VIDEOCHAT_TURN_URLS", " turn:a , turn:b:1 ,") == ("turn:a", "turn:b:1")
    with pytest.raises(SettingsError, match="VIDEOCHAT_STUN_URLS"):
        parse_url_list("VIDEOCHAT_STUN_URLS", "turn:a", ("stun",))
    with pytest.raises(ValidationError, match="TURN user"):
        TurnConfig(urls=("turn:t",), shared_secret="s").credentials_for("", 0)


def test_aiortc_subset_skips_what_aiortc_cannot_use() -> None:
    servers: list[dict[str, Any]] = [
        {"urls": ["stuns:s.example.org", "stun:a.example.org", "stun:b.example.org"]},
        {"urls": "turn:first.example.org", "username": "u", "credential": "p"},
        {"urls": ["turn:second.example.org"], "username": "u2", "credential": "p2"},
    ]
    assert aiortc_subset(servers) == [
        {"urls": ["stun:a.example.org"]},
        {"urls": ["turn:first.example.org"], "username": "u", "credential": "p"},
    ]


# --- the Allocate check against coturn ---------------------------------------------------------


def test_check_turn_allocates_a_relay(coturn: CoturnProcess) -> None:
    username, password = rest_credentials(coturn.secret, "alice", int(time.time()) + 120)
    for url in (coturn.url, coturn.tcp_url):
        result = asyncio.run(check_turn(url, username, password, timeout=5))
        assert result.ok, result.message
        assert result.relayed_address is not None
        assert result.relayed_address[0] == "127.0.0.1"
        assert result.relayed_address[1] != coturn.port
        assert result.relay_s is not None and 0 < result.relay_s <= result.elapsed_s < 5
        assert "relays both ways" in result.message
    quick = asyncio.run(check_turn(coturn.url, username, password, relay_probe=False))
    assert quick.ok and quick.relay_s is None


def test_a_server_that_allocates_but_will_not_relay_is_caught(tmp_path: Path) -> None:
    # Without --allow-loopback-peers coturn allocates on 127.0.0.1 but refuses loopback peers:
    # the shape of a misconfigured production server (peer rules, wrong relay address).
    with CoturnProcess(tmp_path, allow_loopback_peers=False) as strict:
        username, password = rest_credentials(strict.secret, "dave", int(time.time()) + 120)
        result = asyncio.run(check_turn(strict.url, username, password, timeout=3))
    assert result.kind == "relay_failed"
    assert result.relayed_address is not None
    assert result.message.startswith(
        "TURN server allocated a relay but refused to relay to a peer (403 Forbidden IP)"
    )


def test_wrong_credential_is_refused_clearly(coturn: CoturnProcess) -> None:
    username, _ = rest_credentials(coturn.secret, "alice", int(time.time()) + 120)
    _, forged = rest_credentials("not-the-secret", "alice", int(time.time()) + 120)
    result = asyncio.run(check_turn(coturn.url, username, forged, timeout=5))
    assert not result.ok
    assert result.kind == "refused" and result.error_code == 401
    assert result.message == (
        "TURN server refused the credentials (401 Unauthorized): wrong or expired username/password"
    )
    nothing = asyncio.run(check_turn(coturn.url, None, None, timeout=5))
    assert nothing.kind == "refused" and "none were given" in nothing.message


def test_expired_rest_credential_is_refused_by_coturn(coturn: CoturnProcess) -> None:
    cfg = TurnConfig(urls=(coturn.url,), shared_secret=coturn.secret, ttl_s=60)
    # Minted 61 s in the past with a 60 s lifetime: a correctly signed but expired username.
    now = time.time()
    stale = asyncio.run(check_config(cfg, "carol", now - 61, timeout=5))
    fresh = asyncio.run(check_config(cfg, "carol", now, timeout=5))
    assert [c.kind for c in stale] == ["refused"], stale
    assert "expired" in stale[0].message
    assert [c.kind for c in fresh] == ["ok"], fresh


def test_an_allocation_outlives_its_credential(coturn: CoturnProcess) -> None:
    """coturn checks the REST expiry when allocating, not when refreshing: a call may outlast
    its credential (what videochat.media.turn's docstring and the operations notes promise)."""

    async def scenario() -> tuple[int, str]:
        username, password = rest_credentials(coturn.secret, "frank", int(time.time()) + 2)
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(("127.0.0.1", coturn.port), username, password,
                                          lifetime=600, channel_refresh_time=500),
            remote_addr=("127.0.0.1", coturn.port),
        )
        try:
            await proto.connect()
            await asyncio.sleep(max(0.0, int(username.split(":")[0]) + 1.2 - time.time()))
            refresh = stun.Message(message_method=stun.Method.REFRESH,
                                   message_class=stun.Class.REQUEST)
            refresh.attributes["LIFETIME"] = 600
            response, _ = await proto.request_with_retry(refresh)
            fresh_check = await check_turn(coturn.url, username, password, relay_probe=False)
            return response.attributes["LIFETIME"], fresh_check.kind
        finally:
            await proto.delete()
            transport.close()

    lifetime, new_allocation = asyncio.run(scenario())
    assert lifetime == 600  # the old allocation was refreshed after the expiry
    assert new_allocation == "refused"  # while the same credential opens nothing new


def test_unreachable_servers_get_a_plain_verdict(coturn: CoturnProcess) -> None:
    dead = CoturnProcess(coturn.workdir / "dead")  # a free port nobody listens on
    udp = asyncio.run(check_turn(dead.url, "u", "p", timeout=1.0))
    assert udp.kind == "timeout" and udp.message.startswith("TURN server unreachable")
    assert 1.0 <= udp.elapsed_s < 3
    tcp = asyncio.run(check_turn(dead.tcp_url, "u", "p", timeout=1.0))
    assert tcp.kind == "unreachable" and "connection refused" in tcp.message
    bad = asyncio.run(check_turn("http://example.org", "u", "p"))
    assert bad.kind == "bad_url"


# --- ICE gathering and the verdict ---------------------------------------------------------------


def test_candidate_types_from_browser_strings() -> None:
    lines = [
        "candidate:842163049 1 udp 1677729535 203.0.113.7 50914 typ srflx raddr 0.0.0.0 rport 0",
        "candidate:1 1 udp 2122260223 3e1c0b8a-5c0e.local 56143 typ host generation 0",
        "a=candidate:3 1 udp 41885439 198.51.100.2 3478 typ relay raddr 203.0.113.7 rport 5",
        "not a candidate",
    ]
    assert candidate_types(lines) == {"host": 1, "srflx": 1, "prflx": 0, "relay": 1}


@pytest.mark.parametrize(
    ("types", "relay_only", "turn", "level", "fragment"),
    [
        ({"host": 1, "relay": 1}, True, True, "good", "TURN relay available"),
        ({"host": 0}, True, True, "blocked", "relay-only mode but no TURN relay"),
        ({"host": 1, "srflx": 1}, False, True, "ok", "gave no relay: see the TURN check"),
        ({"host": 1, "srflx": 1}, False, False, "ok", "No TURN server is configured"),
        ({"host": 2}, False, False, "warning", "same network only"),
        ({}, False, False, "blocked", "no ICE candidates"),
    ],
)
def test_ice_verdict(
    types: dict[str, int], relay_only: bool, turn: bool, level: str, fragment: str
) -> None:
    verdict = ice_verdict(types, relay_only, turn)
    assert verdict.level == level and fragment in verdict.message


def test_gather_check_sees_what_aiortc_would_offer(
    coturn: CoturnProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aioice never offers 127.0.0.1; on loopback it is the only address worth offering.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    cfg = TurnConfig(urls=(coturn.url,), shared_secret=coturn.secret)
    servers = cfg.ice_servers_for("erin", time.time())
    relay_only = asyncio.run(gather_check(servers, relay_only=True))
    assert relay_only.types == {"host": 0, "srflx": 0, "prflx": 0, "relay": 1}, relay_only
    assert 0 < relay_only.elapsed_s < 5
    everything = asyncio.run(gather_check(servers))
    assert everything.types["host"] == 1 and everything.types["relay"] == 1, everything
    refused = asyncio.run(gather_check(
        TurnConfig(urls=(coturn.url,), username="1:x", credential="bad").ice_servers_for("x", 0),
        relay_only=True,
    ))
    assert refused.types["relay"] == 0
    assert ice_verdict(refused.types, True, True).level == "blocked"


# --- a relay-only call through coturn ----------------------------------------------------------


class _Pattern(VideoStreamTrack):
    """Noise, 320x240 at the track's default 30 fps: incompressible, so the bytes are real."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(8)

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = self.rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base or fractions.Fraction(1, 90000)
        return frame


def _selected_pair(pc: RTCPeerConnection) -> Any:
    ice = pc.getTransceivers()[0].sender.transport.transport  # RTCIceTransport
    pairs = ice._connection._nominated  # aioice: component -> CandidatePair
    return pairs[1]


async def _relay_call(
    cfg: TurnConfig, frames_wanted: int, bob_relay_only: bool | None = None
) -> dict[str, Any]:
    """alice sends video to bob; bob's policy may differ (the server side of a browser call).

    TURN usernames carry a fresh tag, so coturn's accounting can be told apart from other tests'.
    """
    now = time.time()
    tag = uuid.uuid4().hex[:8]
    callers = []
    policies = {"alice": cfg.relay_only,
                "bob": cfg.relay_only if bob_relay_only is None else bob_relay_only}
    for who in ("alice", "bob"):
        conf = aiortc_configuration(
            cfg.ice_servers_for(f"{who}-{tag}", now), relay_only=policies[who]
        )
        callers.append(RTCPeerConnection(configuration=conf))
    alice, bob = callers
    got_track: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @bob.on("track")
    def on_track(track: Any) -> None:
        if not got_track.done():
            got_track.set_result(track)

    alice.addTrack(_Pattern())
    bob.addTransceiver("video", direction="recvonly")
    try:
        await alice.setLocalDescription(await alice.createOffer())
        await bob.setRemoteDescription(alice.localDescription)
        await bob.setLocalDescription(await bob.createAnswer())
        await alice.setRemoteDescription(bob.localDescription)
        offer_candidates = [
            line for line in alice.localDescription.sdp.splitlines()
            if line.startswith("a=candidate:")
        ]
        track = await asyncio.wait_for(got_track, 20)
        frames = []
        for _ in range(frames_wanted):  # bounded: frames_wanted frames or 20 s per frame at most
            frames.append(await asyncio.wait_for(track.recv(), 20))
        stats = await bob.getStats()
        return {
            "tag": tag,
            "bob_transport_bytes_received": sum(
                s.bytesReceived for s in stats.values() if s.type == "transport"
            ),
            "offer_candidates": offer_candidates,
            "pairs": [_selected_pair(alice), _selected_pair(bob)],
            "frames": frames,
        }
    finally:
        await alice.close()
        await bob.close()


def test_relay_only_call_goes_through_coturn(coturn: CoturnProcess) -> None:
    cfg = TurnConfig(urls=(coturn.url,), shared_secret=coturn.secret, ttl_s=600, relay_only=True)
    result = asyncio.run(_relay_call(cfg, frames_wanted=30))

    # Only relay candidates were offered, and both ends nominated relay <-> relay.
    assert result["offer_candidates"]
    assert all(" typ relay" in c for c in result["offer_candidates"]), result["offer_candidates"]
    for pair in result["pairs"]:
        assert pair.local_candidate.type == "relay"
        assert pair.remote_candidate.type == "relay"
        assert pair.remote_addr[1] != coturn.port  # a relayed port, not coturn's listener
    frames = result["frames"]
    assert len(frames) == 30 and (frames[-1].width, frames[-1].height) == (320, 240)

    # coturn's own accounting: the two allocations of this call relayed the media between them.
    names = {f"alice-{result['tag']}": "alice", f"bob-{result['tag']}": "bob"}
    by_user: dict[str, Any] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(by_user) < 2:  # usage lines come asynchronously
        by_user = {
            names[u.username.split(":", 1)[1]]: u
            for u in coturn.final_usage(peer=True).values()
            if u.username.split(":", 1)[1] in names
        }
        time.sleep(0.1)
    assert set(by_user) == {"alice", "bob"}, coturn.log_text()[-3000:]
    # Media alice -> bob left alice's relay towards bob's relay and arrived there: coturn counted
    # at least every byte bob's transport received (STUN checks ride the same path, hence >=).
    bob_got = result["bob_transport_bytes_received"]
    assert bob_got > 20_000  # 30 frames of noise; STUN checks alone are a few hundred bytes
    assert by_user["alice"].sb >= bob_got * 0.95
    assert by_user["bob"].rb >= bob_got * 0.95


def test_relay_only_on_one_side_forces_the_media_through_coturn(
    coturn: CoturnProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The browser is relay-only, the server is not (streamlit-webrtc passes only iceServers to
    aiortc): media still crosses coturn, since every pair has alice's relay at one end."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    cfg = TurnConfig(urls=(coturn.url,), shared_secret=coturn.secret, relay_only=True)
    result = asyncio.run(_relay_call(cfg, frames_wanted=20, bob_relay_only=False))
    alice_pair, bob_pair = result["pairs"]
    assert alice_pair.local_candidate.type == "relay"
    assert bob_pair.remote_candidate.type == "relay"
    assert all(" typ relay" in c for c in result["offer_candidates"])
    bob_got = result["bob_transport_bytes_received"]
    assert bob_got > 10_000
    deadline = time.monotonic() + 5
    alice_usage = None
    while time.monotonic() < deadline and alice_usage is None:
        for u in coturn.final_usage(peer=True).values():
            if u.username.endswith(f":alice-{result['tag']}"):
                alice_usage = u
        time.sleep(0.1)
    assert alice_usage is not None, coturn.log_text()[-3000:]
    assert alice_usage.sb >= bob_got * 0.95  # alice's relay sent bob everything bob received

