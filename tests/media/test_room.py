from __future__ import annotations

from collections.abc import Callable

import pytest

from videochat.events import CallEvent
from videochat.exceptions import InvalidDisplayName, InvalidRoomName, NotFound
from videochat.media.participant import validate_display_name, validate_room_name
from videochat.media.room import RoomFull, RoomRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_registry(**kw: object) -> tuple[RoomRegistry, list[list[str]], list[CallEvent], Clock]:
    woken: list[list[str]] = []
    events: list[CallEvent] = []
    clock = Clock()
    deferred: list[tuple[float, Callable[[], None]]] = []
    reg = RoomRegistry(wake=lambda ids: woken.append(sorted(ids)), emit=events.append,
                       clock=clock, defer=lambda d, fn: deferred.append((d, fn)), **kw)  # type: ignore[arg-type]
    reg.deferred = deferred  # type: ignore[attr-defined]
    return reg, woken, events, clock


def test_join_binds_both_directions_and_keeps_a_spare() -> None:
    reg, woken, events, _ = make_registry()
    ana = reg.join("r1", "ana", "s-ana")
    assert [s.publisher_id for s in ana.slots] == [None]  # a spare, waiting
    bob = reg.join("r1", "bob", "s-bob")
    # bob receives ana at once, ana's spare now receives bob, and ana gets a new spare
    assert [s.publisher_id for s in bob.slots] == [ana.id, None]
    assert [s.publisher_id for s in ana.slots] == [bob.id, None]
    assert bob.slots[0].video.hub is ana.video_hub
    assert ana.slots[0].audio.hub is bob.audio_hub
    assert woken[-1] == ["s-ana"]  # the peer's page is woken, not polled
    kinds = [e.kind for e in events]
    assert kinds == ["call_started", "participant_joined", "participant_joined"]


def test_leave_unbinds_peer_slots_and_ends_call() -> None:
    reg, woken, events, _ = make_registry()
    ana = reg.join("r1", "ana", "s-ana")
    bob = reg.join("r1", "bob", "s-bob")
    reg.leave(bob.id)
    assert all(s.publisher_id is None for s in ana.slots)
    assert ana.slots[0].video.hub is None
    assert woken[-1] == ["s-ana"]
    with pytest.raises(NotFound):
        reg.get(bob.id)
    reg.leave(ana.id)
    assert reg.rooms == {}
    assert [e.kind for e in events][-2:] == ["participant_left", "call_ended"]


def test_freed_slot_is_reused_by_the_next_joiner() -> None:
    reg, *_ = make_registry()
    ana = reg.join("r1", "ana")
    bob = reg.join("r1", "bob")
    reg.leave(bob.id)
    cid = reg.join("r1", "cid")
    assert [s.publisher_id for s in ana.slots] == [cid.id, None]


def test_four_participants_each_receive_the_three_others() -> None:
    reg, *_ = make_registry()
    people = [reg.join("big", n) for n in ("a", "b", "c", "d")]
    for p in people:
        others = {q.id for q in people if q is not p}
        assert {s.publisher_id for s in p.bound_slots()} == others


def test_two_tabs_with_one_name_are_told_apart() -> None:
    reg, *_ = make_registry()
    names = [reg.join("r1", "ana").name for _ in range(3)]
    assert names == ["ana", "ana (2)", "ana (3)"]


def test_room_full_names_the_limit() -> None:
    reg, *_ = make_registry(max_participants=2)
    reg.join("r1", "a")
    reg.join("r1", "b")
    with pytest.raises(RoomFull, match="2 participants"):
        reg.join("r1", "c")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 41, "r/1", "<script>", "é"])
def test_bad_room_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(InvalidRoomName, match="letters, digits"):
        validate_room_name(bad)


@pytest.mark.parametrize("bad", ["", " ana", "ana ", "a" * 33, "<b>x</b>", "a\nb", "a  b"])
def test_bad_display_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(InvalidDisplayName, match="1-32 characters"):
        validate_display_name(bad)


def test_unicode_display_names_are_kept() -> None:
    assert validate_display_name("Zoë O'Brien") == "Zoë O'Brien"
    assert validate_display_name("李雷") == "李雷"


def test_closed_tab_is_reconnecting_then_left_after_grace() -> None:
    reg, woken, events, clock = make_registry()
    ana = reg.join("r1", "ana", "s-ana")
    bob = reg.join("r1", "bob", "s-bob")
    alive = {"s-ana": True, "s-bob": False}
    reg.reap(lambda s: alive[s], grace_s=10)
    assert bob.state == "reconnecting"
    assert woken[-1] == ["s-ana"]
    clock.now += 5
    assert reg.reap(lambda s: alive[s], grace_s=10) == []
    clock.now += 6
    assert reg.reap(lambda s: alive[s], grace_s=10) == [bob.id]
    assert reg.find(bob.id) is None
    assert ana.slots[0].publisher_id is None
    left = [e for e in events if e.kind == "participant_left"]
    assert left[0].data["reason"] == "session_lost"


def test_tab_back_within_grace_resumes() -> None:
    reg, _, _, clock = make_registry()
    reg.join("r1", "ana", "s-ana")
    bob = reg.join("r1", "bob", "s-bob")
    reg.reap(lambda s: s != "s-bob", grace_s=10)
    clock.now += 3
    reg.reap(lambda s: True, grace_s=10)
    assert bob.state == "joined"


def test_spare_waits_for_the_join_to_settle() -> None:
    reg, woken, _, clock = make_registry(spare_delay_s=3.0)
    ana = reg.join("r1", "ana", "s-ana")
    bob = reg.join("r1", "bob", "s-bob")
    assert ana.spare_not_before == bob.spare_not_before == clock.now + 3.0
    delay, fn = reg.deferred[-1]  # type: ignore[attr-defined]
    assert delay > 3.0
    fn()
    assert woken[-1] == ["s-ana", "s-bob"]


def test_media_reconnect_is_not_undone_while_the_tab_is_open() -> None:
    reg, *_ = make_registry()
    reg.join("r1", "ana", "s-ana")
    bob = reg.join("r1", "bob", "s-bob")
    reg.set_state(bob.id, "reconnecting")  # the supervisor: bob's media dropped
    reg.reap(lambda s: True, grace_s=10)
    assert bob.state == "reconnecting"
