"""A room opened with a passcode keeps out a link without it, and lets the right one in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.browser


def join_with_form(page: Any, name: str, passcode: str) -> None:
    page.get_by_role("textbox", name="Your name").fill(name)
    page.get_by_role("textbox", name="Passcode (optional)").fill(passcode)
    page.get_by_role("button", name="Join").click()


def test_passcode_protects_a_room(open_page: Callable[[str], Any], room_name: str) -> None:
    owner = open_page(f"/call?room={room_name}")
    passcode_box = owner.get_by_role("textbox", name="Passcode (optional)")
    wait_for(lambda: passcode_box.count() > 0, 30, "join form")
    join_with_form(owner, "ana", "s3cret-pass")
    wait_for(lambda: owner.get_by_text("You are alone in this room").count() > 0, 30,
             "the owner in the call")

    guest = open_page(f"/call?room={room_name}&name=bob&join=1")
    wait_for(lambda: guest.get_by_text("is protected: enter its passcode").count() > 0, 30,
             "a clear refusal naming the room")
    join_with_form(guest, "bob", "wrong")
    wait_for(lambda: guest.get_by_text("wrong passcode for room").count() > 0, 30,
             "the wrong passcode refused")
    join_with_form(guest, "bob", "s3cret-pass")
    wait_for(lambda: guest.get_by_text(f"Room {room_name}").count() > 0, 30,
             "the right passcode let in")
