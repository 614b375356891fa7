"""The composition root wires both flows on real backends, without Streamlit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.backends.services import Services, mongo_client
from videochat.runtime import build_runtime
from videochat.settings import Settings


def test_build_runtime_wires_both_flows(valkey_server: ValkeyProcess,
                                        secantus_server: SecantusProcess, tmp_path: Path,
                                        loop: asyncio.AbstractEventLoop) -> None:
    settings = Settings.from_mapping({
        "REDIS_URL": valkey_server.url, "MONGODB_URI": secantus_server.url,
        "VIDEOCHAT_DB": "t_" + uuid.uuid4().hex[:12], "VIDEOCHAT_STATE_DIR": str(tmp_path),
    })
    woken: list[list[str]] = []
    rt = build_runtime(settings, Services.from_settings(settings), loop=loop,
                       wake=lambda ids: woken.append(list(ids)),
                       session_alive=lambda sid: True)
    try:
        assert rt.supervisor.counter_of == rt.sampler.counter  # passed in, not poked
        assert rt.fault_consumer.running and rt.bots is not None and rt.bots.running
        assert rt.housekeeping is not None and rt.housekeeping.running
        rt.start_housekeeping()  # idempotent
        assert rt.registry.max_participants == settings.max_participants
    finally:
        assert rt.housekeeping is not None
        rt.housekeeping.stop()
        rt.fault_consumer.stop()
        rt.bots.stop()
        rt.chat.stop()
        rt.metrics.close()


def test_the_runtime_imports_no_streamlit() -> None:
    code = ("import sys, videochat.runtime;"
            "print(sorted(m for m in sys.modules if 'streamlit' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_graceful_stop_flushes_and_keeps_the_call_open(
        valkey_server: ValkeyProcess, secantus_server: SecantusProcess, tmp_path: Path,
        loop: asyncio.AbstractEventLoop) -> None:
    from datetime import UTC, datetime

    from videochat.backends import keys
    from videochat.events import CallEvent
    from videochat.metrics.stats import MetricSample

    settings = Settings.from_mapping({
        "REDIS_URL": valkey_server.url, "MONGODB_URI": secantus_server.url,
        "VIDEOCHAT_DB": "t_" + uuid.uuid4().hex[:12], "VIDEOCHAT_STATE_DIR": str(tmp_path),
    })
    services = Services.from_settings(settings)
    db = mongo_client(secantus_server.url)[settings.db_name]  # the app's clients get closed
    rt = build_runtime(settings, services, loop=loop, wake=lambda ids: None,
                       session_alive=lambda sid: False)  # every tab "gone": reaping would end it
    ana = rt.registry.join("r1", "ana", session_id="s1")
    call_id = rt.registry.rooms["r1"].call_id
    rt.metrics.record(MetricSample(at=datetime.now(UTC), room="r1", call_id=call_id,
                                   participant=ana.id, leg="L1", direction="publish",
                                   kind="video", fps=15.0))
    rt.bus.emit(CallEvent("media_stalled", "r1", participant=ana.id, call_id=call_id))
    done = rt.shut_down(budget_s=8.0)

    assert all(done.values()), done
    assert rt.stopping and not rt.fault_consumer.running and not rt.housekeeping.running
    # Flushed: what was buffered a moment ago is in MongoDB.
    assert db[keys.EVENTS].count_documents({"kind": "media_stalled", "room": "r1"}) == 1
    assert db[keys.SAMPLES].count_documents({"meta.room": "r1"}) == 1
    # The call stays open for the participants coming back to the next process.
    assert db[keys.CALLS].find_one({"_id": call_id})["active"] is True
    assert db[keys.PARTICIPANTS].find_one({"_id": ana.id})["left_at"] is None
