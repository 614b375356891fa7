"""Rejoin tokens and seats on the real embedded Valkey: a restarted process gives each tab its
own seat back by token (never by name), keeps protected rooms protected, refuses forged or
stale tokens, and continues the same call."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import redis

from videochat.call.access import RoomAccess
from videochat.call.presence import Presence
from videochat.call.rejoin import KEY_FILE, RejoinClaim, RejoinTokens, load_or_create_key
from videochat.call.seats import Seats
from videochat.events import CallEvent
from videochat.exceptions import AccessDenied, RejoinRefused, SettingsError
from videochat.media.room import RoomRegistry
from videochat.settings import Settings

PID = "0123456789abcdef0123456789abcdef"


class Process:
    """One app process's rooms, presence and seats, sharing Redis with the others."""

    def __init__(self, client: redis.Redis, tokens: RejoinTokens, node: str = "n1") -> None:
        self.events: list[CallEvent] = []
        self.registry = RoomRegistry(emit=self.events.append, defer=lambda d, fn: None)
        self.presence = Presence(client, node=node)
        self.access = RoomAccess(client)
        self.seats = Seats(self.registry, self.presence, self.access, tokens)

    def publish_presence(self) -> None:
        """What the runtime's join hook and housekeeping do."""
        for p in self.registry.participants():
            room = self.registry.rooms[p.room]
            self.presence.touch(p.room, p.id, p.name, p.joined_at, room.call_id, room.started_at)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def tokens() -> RejoinTokens:
    return RejoinTokens(b"k" * 32)


def test_token_round_trip_and_forgeries_are_refused(tokens: RejoinTokens) -> None:
    claim = RejoinClaim("phoenix", PID, "ana (2)", 1700000000.5)
    token = tokens.issue(claim)
    assert tokens.decode(token) == claim
    body, sig = token.split(".")
    forged = RejoinClaim("phoenix", PID, "bob", 1700000000.5)
    for bad in (tokens.issue(forged).split(".")[0] + "." + sig,  # payload swapped
                body + "." + sig[:-2] + ("AA" if not sig.endswith("AA") else "BB"),
                RejoinTokens(b"x" * 32).issue(claim),  # another server's key
                "", "garbage", "a.b.c", "x" * 5000, None, 42):
        with pytest.raises(RejoinRefused, match="not valid"):
            tokens.decode(bad)


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / KEY_FILE
    key = load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == key  # survives a restart of the process
    a = RejoinTokens.from_secret_or_folder(None, tmp_path / "state")
    b = RejoinTokens.from_secret_or_folder(None, tmp_path / "state")
    claim = RejoinClaim("r1", PID, "ana", 1.0)
    assert b.decode(a.issue(claim)) == claim
    with_secret = RejoinTokens.from_secret_or_folder("s" * 20, tmp_path / "other")
    with pytest.raises(RejoinRefused):
        with_secret.decode(a.issue(claim))


def test_short_rejoin_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.load({"VIDEOCHAT_REJOIN_SECRET": "hunter2"}, secrets_file=None)
    assert "VIDEOCHAT_REJOIN_SECRET" in str(err.value) and "hunter2" not in str(err.value)
    assert Settings.load({"VIDEOCHAT_REJOIN_SECRET": "x" * 16},
                         secrets_file=None).rejoin_secret == "x" * 16


def test_restart_gives_each_tab_its_own_seat_and_one_call(redis_conn: redis.Redis,
                                                          tokens: RejoinTokens) -> None:
    old = Process(redis_conn, tokens)
    ana = old.seats.join("phoenix", "ana", "s1")
    bob = old.seats.join("phoenix", "bob", "s2")
    call_id = old.registry.rooms["phoenix"].call_id
    old.publish_presence()
    ana_token, bob_token = old.seats.token_for(ana), old.seats.token_for(bob)

    new = Process(redis_conn, tokens)  # the old process died: nothing in memory any more
    # A newcomer typing "ana" while ana is expected back does not get her name.
    time.sleep(0.01)
    ana2 = new.seats.rejoin(ana_token, "s1b")
    assert (ana2.id, ana2.name) == (ana.id, "ana")
    assert new.registry.rooms["phoenix"].call_id == call_id
    assert new.kinds() == ["server_restart", "participant_joined"]
    gap = new.events[0].data
    assert gap["gap_from"] <= gap["gap_to"] and gap["gap_s"] >= 0
    assert new.events[1].data == {"participant_id": ana.id, "rejoined": True}

    cid = new.seats.join("phoenix", "bob", "s3")
    assert cid.name == "bob (2)" and cid.id != bob.id  # bob's seat is bob's, not his name's
    bob2 = new.seats.rejoin(bob_token, "s2b")
    assert (bob2.id, bob2.name) == (bob.id, "bob")
    assert new.kinds().count("call_started") == 0  # one call across the restart
    assert {s.publisher_id for s in bob2.bound_slots()} == {ana.id, cid.id}


def test_rejoin_is_idempotent_and_takes_over_the_seat(redis_conn: redis.Redis,
                                                      tokens: RejoinTokens) -> None:
    p = Process(redis_conn, tokens)
    ana = p.seats.join("r-idem", "ana", "s1")
    p.publish_presence()
    token = p.seats.token_for(ana)
    again = p.seats.rejoin(token, "s9")
    twice = p.seats.rejoin(token, "s10")
    assert again is ana and twice is ana and ana.session_id == "s10"
    assert len(p.registry.rooms["r-idem"].participants) == 1


def test_stale_or_left_seat_is_refused(redis_conn: redis.Redis, tokens: RejoinTokens) -> None:
    old = Process(redis_conn, tokens)
    ana = old.seats.join("r-left", "ana", "s1")
    old.publish_presence()
    token = old.seats.token_for(ana)
    old.registry.leave(ana.id)
    old.presence.leave("r-left", ana.id)  # what the leave hook does
    with pytest.raises(RejoinRefused, match="seat in room 'r-left' is gone"):
        Process(redis_conn, tokens).seats.rejoin(token, "s2")

    stale = Process(redis_conn, tokens)
    stale.presence.clock = lambda: time.time() - 3600  # last seen an hour ago
    bob = stale.seats.join("r-stale", "bob", "s1")
    stale.publish_presence()
    with pytest.raises(RejoinRefused, match="gone"):
        Process(redis_conn, tokens).seats.rejoin(stale.seats.token_for(bob), "s2")


def test_protected_room_stays_protected_but_its_members_come_back(
        redis_conn: redis.Redis, tokens: RejoinTokens) -> None:
    old = Process(redis_conn, tokens)
    ana = old.seats.join("r-pass", "ana", "s1", passcode="open sesame")
    old.publish_presence()
    new = Process(redis_conn, tokens)
    with pytest.raises(AccessDenied, match="protected"):
        new.seats.join("r-pass", "eve", "s9")
    with pytest.raises(AccessDenied, match="wrong passcode"):
        new.seats.join("r-pass", "eve", "s9", passcode="guess")
    assert new.seats.rejoin(old.seats.token_for(ana), "s1b").id == ana.id
    assert new.seats.join("r-pass", "bob", "s2", passcode="open sesame").name == "bob"


def test_newcomer_first_after_restart_continues_the_call(redis_conn: redis.Redis,
                                                         tokens: RejoinTokens) -> None:
    old = Process(redis_conn, tokens)
    old.seats.join("r-first", "ana", "s1")
    call_id = old.registry.rooms["r-first"].call_id
    old.publish_presence()
    new = Process(redis_conn, tokens)
    cid = new.seats.join("r-first", "ana", "s3")
    assert cid.name == "ana (2)"  # ana is expected back
    assert new.registry.rooms["r-first"].call_id == call_id
    assert "call_started" not in new.kinds() and "server_restart" in new.kinds()
