"""Faults injected into a live two-browser call from the command line, and the call's recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import wait_for
from videochat.qa.harness import (
    PROJECT_ROOT,
    AppProcess,
    NetNamespace,
    first_progress_after,
    inbound_video,
    loss_between,
    progress_times,
    resumed_after_stall,
)

# aioice alone notices a dead path only after ~30 s (its consent checks): recovery well before
# that is the app's own detection and rebuild at work.
RECOVERED_BY_ITSELF_S = 10.0

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def faults(netns: NetNamespace, app: AppProcess, *args: str) -> str:
    """`python -m videochat faults ...` run like a user would, from the app's folder."""
    env = dict(os.environ, VIDEOCHAT_STATE_DIR=str(app.state_dir))
    out = subprocess.run(netns.prefix() + [sys.executable, "-m", "videochat", "faults", *args],
                         env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"faults {' '.join(args)}: {out.stderr or out.stdout}"
    return out.stdout


@pytest.fixture
def call(open_page: Callable[[str], Any], room_name: str) -> Iterator[tuple[Any, Any, str]]:
    ana = open_page(f"/call?room={room_name}&name=ana&join=1")
    time.sleep(1)
    bob = open_page(f"/call?room={room_name}&name=bob&join=1")
    wait_for(lambda: all(first_progress_after(p, time.time() - 1.5, 5) for p in (ana, bob)),
             60, "both participants receiving moving video")
    yield ana, bob, room_name


def measured_loss(page: Any, seconds: float, tries: int = 3) -> float | None:
    """Loss the browser measured over `seconds` (retried if its legs were mid-rebuild)."""
    for _ in range(tries):
        before = inbound_video(page)
        time.sleep(seconds)
        loss = loss_between(before, inbound_video(page))
        if loss is not None:
            return loss
    return None


def both_moving_after(pages: tuple[Any, Any], t: float, timeout: float) -> float:
    """Seconds after `t` at which both pages showed moving video again."""
    wait_for(lambda: all(first_progress_after(p, t, 3) for p in pages), timeout,
             "video moving again in both browsers")
    return max(first_progress_after(p, t, 3) or 0.0 for p in pages) - t


def test_loss_from_the_cli_shows_in_the_browser_stats_and_clears(
    netns: NetNamespace, app: AppProcess, call: tuple[Any, Any, str]
) -> None:
    ana, bob, room = call
    faults(netns, app, "inject", "--room", room, "--participant", "bob", "--kind", "loss",
           "--percent", "20", "--duration", "12", "--direction", "down")
    time.sleep(2)
    loss = measured_loss(bob, 5)
    print(f"browser-side loss during 20 % fault: {loss}")
    assert loss is not None and 0.10 <= loss <= 0.30
    faults(netns, app, "clear", "--room", room)
    time.sleep(2)
    after_clear = measured_loss(bob, 4)
    print(f"browser-side loss after clear: {after_clear}")
    assert after_clear is not None and after_clear < 0.05


def test_video_resumes_quickly_after_an_8s_blackout(
    netns: NetNamespace, app: AppProcess, call: tuple[Any, Any, str]
) -> None:
    ana, bob, room = call
    faults(netns, app, "inject", "--room", room, "--participant", "bob", "--kind", "blackout",
           "--duration", "8")
    start = time.time()
    time.sleep(4)
    assert first_progress_after(ana, start + 3.0, 3) is None, "the blackout did not stop media"
    end = start + 8.0  # the CLI returns once the fault is applied, so this errs late
    took = both_moving_after((ana, bob), end, 30)
    print(f"both browsers moving {took:.2f} s after the 8 s blackout ended")
    # Recovered by our own detection, not aioice's ~30 s consent timeout. How fast is a figure
    # of bench/reconnect.py: timings asserted here failed on a loaded 2-core box (issue 13).
    assert took <= RECOVERED_BY_ITSELF_S


def test_video_resumes_after_a_killed_connection(
    netns: NetNamespace, app: AppProcess, call: tuple[Any, Any, str]
) -> None:
    ana, bob, room = call
    asked = time.time()
    faults(netns, app, "inject", "--room", room, "--participant", "bob", "--kind", "kill")
    # Timed from the moment the app closed bob's connections (its fault_started event), not
    # from the command, whose Python start-up is not the app's doing.
    killed = next(e["at"] for e in wait_events(app, asked - 1, "fault_started", "bob"))
    # Moving again = after the stall the kill caused (frames still in the jitter buffer may
    # land just after the command returns).
    wait_for(lambda: all(resumed_after_stall(progress_times(p), killed) for p in (ana, bob)),
             30, "video moving again in both browsers after the kill")
    took = max(resumed_after_stall(progress_times(p), killed) or 0.0 for p in (ana, bob)) - killed
    print(f"both browsers moving {took:.2f} s after bob's connections were killed")
    assert took <= RECOVERED_BY_ITSELF_S  # how fast: bench/reconnect.py


def test_thirty_percent_loss_steps_the_ladder_down_fast_and_back_up(
    netns: NetNamespace, app: AppProcess, call: tuple[Any, Any, str]
) -> None:
    ana, bob, room = call
    # A fresh leg starts at 480p30 and climbs; trouble within 10 s of an up-step counts as a
    # failed probe and doubles the wait before the next climb (anti-flap), so start from the
    # top, settled for 11 s.
    joined = time.time() - 60

    def settled_on_top() -> bool:
        mine = [e for e in app.events(joined, ["quality_changed"]) if e["participant"] == "ana"]
        return bool(mine) and mine[-1]["data"].get("to_level") == "720p30" and (
            time.time() - mine[-1]["at"] >= 11)

    wait_for(settled_on_top, 60, "ana's leg settled at 720p30")
    faults(netns, app, "inject", "--room", room, "--participant", "ana", "--kind", "loss",
           "--percent", "30", "--direction", "down", "--duration", "12")
    start = next(e["at"] for e in wait_events(app, time.time() - 10, "fault_started", "ana"))
    wait_events(app, start, "quality_changed", "ana", direction="down")
    wait_for(lambda: time.time() > start + 12 + 11, 40, "the loss cleared and 11 s passed")
    changes = [e for e in app.events(start - 0.5, ["quality_changed"])
               if e["participant"] == "ana"]
    downs = [e["at"] - start for e in changes if e["data"].get("direction") == "down"]
    ups = [e["at"] - start - 12 for e in changes
           if e["data"].get("direction") == "up" and e["at"] > start + 12]
    print(f"ladder under 30 % loss: first step down {downs[0]:.2f} s after the onset, first "
          f"step up {ups[0] if ups else float('nan'):.2f} s after it cleared; "
          f"{[(round(e['at'] - start, 2), e['data'].get('to_level')) for e in changes]}")
    # Stepped down while the loss lasted and back up once it cleared (within the 11 s read);
    # how fast each step is, is a figure of bench/reconnect.py.
    assert downs[0] <= 6.0, "did not step down in the first half of the 12 s loss"
    assert ups, "did not step back up after the loss cleared"
    assert all(d <= 12.5 for d in downs), "stepped down again after the loss cleared"


def wait_events(app: AppProcess, since: float, kind: str, participant: str,
                **data: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in app.events(since, [kind]) if e["participant"] == participant
                    and all(e["data"].get(k) == v for k, v in data.items())]
        return bool(found)

    wait_for(seen, 30, f"a {kind} event of {participant}")
    return found
