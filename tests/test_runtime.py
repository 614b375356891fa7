"""The composition root wires both flows on real backends, without Streamlit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.backends.services import Services
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
