"""The app process dies (SIGKILL) or is stopped (SIGTERM) under a live two-browser call and is
started again in the same folder: both tabs come back into their own seats by themselves, video
moves both ways again, chat loses and duplicates nothing, and the call log holds one call.

How fast is bench/restart.py's business; the bounds here only catch "never came back".
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import E2E_ENV, artifacts_dir, wait_for
from videochat.backends.embedded import free_port
from videochat.qa.harness import AppProcess, Browser, NetNamespace, advancing, shown_remote

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BACK_WITHIN_S = 45.0  # "came back by itself"; the speed is the benchmark's


@pytest.fixture(scope="module")
def restart_app(netns: NetNamespace, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[AppProcess]:
    proc = AppProcess(tmp_path_factory.mktemp("restart-state"), port=free_port(), netns=netns,
                      env=E2E_ENV)
    proc.start()
    yield proc
    proc.stop()
    print("---- app log (tail) ----\n" + proc.log_tail(120))


def moving(page: Any) -> bool:
    before = shown_remote(page)
    time.sleep(0.6)
    return advancing(shown_remote(page), before)


def in_call(browser: Browser, app: AppProcess, room: str, name: str) -> Any:
    page = browser.new_page()
    page.goto(f"{app.url}/call?room={room}&name={name}&join=1")
    return page


def send_chat(page: Any, text: str) -> None:
    box = page.get_by_placeholder("Message")
    box.fill(text)
    box.press("Enter")


def body_text(page: Any) -> str:
    try:
        return str(page.inner_text("body", timeout=2000))
    except Exception:  # noqa: BLE001 - navigating
        return ""


def chat_texts(app: AppProcess, room: str) -> Counter[str]:
    return Counter(d["text"] for d in app.documents("chat_messages", {"room": room}))


def restart_under_call(browser: Browser, app: AppProcess, room: str, kind: str,
                       tmp: Path) -> tuple[Any, Any]:
    ana = in_call(browser, app, room, "ana")
    bob = in_call(browser, app, room, "bob")
    for page, who in ((ana, "ana"), (bob, "bob")):
        wait_for(lambda p=page: moving(p), 60, f"{who}'s remote video moving before the restart")

    # Chat in full flow: some messages acknowledged (each side shows the other's), the last
    # ones typed right before the process goes away.
    acked: list[str] = []
    for i in range(3):
        for page, who in ((ana, "ana"), (bob, "bob")):
            send_chat(page, f"{kind}-{who}-before-{i}")
            time.sleep(0.3)
    for text in [f"{kind}-{w}-before-{i}" for i in range(3) for w in ("ana", "bob")]:
        other = bob if "-ana-" in text else ana
        if text in body_text(other):
            acked.append(text)
    send_chat(ana, f"{kind}-ana-last")
    send_chat(bob, f"{kind}-bob-last")
    if kind == "kill":
        app.kill()
    else:
        app.terminate()

    # While the server is away: the banner, and chat typed into it waits in the tab.
    for page, who in ((ana, "ana"), (bob, "bob")):
        wait_for(lambda p=page: p.locator("#vc-restart").is_visible(), 20,
                 f"{who}'s 'server restarting' banner")
        assert "Server restarting" in page.locator("#vc-restart").inner_text()
        page.fill("#vc-restart-chat", f"{kind}-{who}-while-away")
        page.press("#vc-restart-chat", "Enter")
        wait_for(lambda p=page: p.locator(".vc-outbox-item").count() == 1, 5,
                 f"{who}'s message waiting in the outbox")

    app.start()
    healthy_at = time.monotonic()
    for page, who in ((ana, "ana"), (bob, "bob")):
        try:
            wait_for(lambda p=page: "You are" in body_text(p) and moving(p), BACK_WITHIN_S,
                     f"{who}'s video moving again after the {kind} restart")
        except AssertionError:
            page.screenshot(path=str(artifacts_dir() / f"restart-{kind}-{who}.png"))
            print(who, page.url, page.evaluate("() => JSON.stringify("
                                               "(window.__vcRestart || {}).log || [])"))
            raise
    print(f"{kind}: both videos moving {time.monotonic() - healthy_at:.1f} s after health")
    for page in (ana, bob):
        assert "rejoin=" not in page.url  # the token does not stay in the address bar
        assert "Join a call" not in body_text(page)
        assert " (2)" not in body_text(page)  # their own seats, not a second one each

    # Chat: everything acknowledged before, and everything typed while away, exactly once.
    expected = [*acked, f"{kind}-ana-while-away", f"{kind}-bob-while-away"]
    try:
        wait_for(lambda: all(chat_texts(app, room)[t] >= 1 for t in expected), 20,
                 "every acknowledged and outbox message in the chat history")
    finally:
        print("chat history:", dict(chat_texts(app, room)), "acknowledged:", acked)
    assert all(n == 1 for n in chat_texts(app, room).values()), chat_texts(app, room)
    for page in (ana, bob):
        wait_for(lambda p=page: f"{kind}-ana-while-away" in body_text(p)
                 and f"{kind}-bob-while-away" in body_text(p), 15,
                 "the messages typed while away shown in both chats")

    # One call, continued, with the gap recorded.
    calls = app.documents("calls", {"room": room})
    assert len(calls) == 1, calls
    restarts = [e for e in app.documents("events", {"room": room})
                if e["kind"] == "server_restart"]
    assert len(restarts) == 1 and restarts[0]["call_id"] == calls[0]["_id"], restarts
    assert restarts[0]["data"]["gap_to"] > restarts[0]["data"]["gap_from"]
    return ana, bob


def test_sigkill_under_a_call_every_tab_rejoins_and_chat_survives(
        browser: Browser, restart_app: AppProcess, tmp_path: Path) -> None:
    ana, bob = restart_under_call(browser, restart_app, "phoenix", "kill", tmp_path)

    # A forged token: refused with a reason and a pre-filled form, never someone's seat.
    eve = browser.new_page()
    eve.goto(f"{restart_app.url}/call?room=phoenix&name=ana&join=1&rejoin=forged.token")
    wait_for(lambda: "Could not rejoin the call" in body_text(eve), 30, "the refusal")
    assert "not valid" in body_text(eve)
    # The refusal shows as soon as the first run renders it; the form's fields are filled by
    # the same run, but on a busy box the browser may draw the message before the inputs.
    wait_for(lambda: eve.get_by_role("textbox", name="Your name").input_value() == "ana", 10,
             "the name pre-filled from the link")
    assert eve.get_by_role("textbox", name="Room").input_value() == "phoenix"
    for page in (ana, bob, eve):
        page.context.close()


def test_sigterm_under_a_call_every_tab_rejoins(
        browser: Browser, restart_app: AppProcess, tmp_path: Path) -> None:
    ana, bob = restart_under_call(browser, restart_app, "orion", "term", tmp_path)
    for page in (ana, bob):
        page.context.close()
