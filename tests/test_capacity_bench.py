"""The capacity benchmark's core, run small: one room through a real server process, on loopback."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.capacity import CapacityConfig, extrapolate, run_capacity  # noqa: E402


def small(**kw: object) -> CapacityConfig:
    base: dict[str, object] = {"width": 320, "height": 240, "fps": 20, "max_participants": 2,
                               "hold_s": 4.0, "warmup_s": 1.5, "connect_timeout_s": 20.0,
                               "confirm": 0}
    base.update(kw)
    return CapacityConfig(**base)  # type: ignore[arg-type]


def test_one_room_relays_every_frame_through_the_server_process() -> None:
    # The benchmark runs and reports: how fast, and how clean on a shared box, is its result,
    # not this test's (bench/capacity.py; issue 13).
    result = asyncio.run(run_capacity(small()))
    assert result["error"] is None, result.get("server_log_tail")
    assert result["server_exit_code"] == 0  # left through "quit", nothing left running
    (step,) = result["steps"]
    assert step["participants"] == 2 and step["receive_legs"] == 2
    assert step["server_pcs"] == step["server_pcs_connected"] == 4
    # Frames went through the server on both legs and their stamps were read back.
    assert step["frames_received"] > 0, step
    assert step["frames_unreadable"] < step["frames_received"], step
    # Every gap in the frame counters is a frame the server's relay skipped for a lagging
    # encoder: loss is measured, and measured right.
    assert abs(step["frames_lost"] - step["relay_skipped_frames"]) <= 2, step
    if step["relay_skipped_frames"] == 0:
        assert step["loss_pct"] == 0.0, step
    assert step["latency_ms"]["p50"] > 0, step
    if step["forwarded_legs"] == step["receive_legs"]:
        # A forwarded frame is the publisher's bitstream unchanged: the client knows it by
        # its bytes and never decodes it (decoding every frame made the client the limit).
        assert step["frames_decoded_by_clients"] < step["frames_received"] / 2, step
    assert step["server_cpu_pct"] > 0.0  # the server process did the relaying
    # Who kept up with their sockets is measured, so a failing step can say whose limit it was.
    for figure in ("server_udp_drops", "client_udp_drops", "client_udp_queue_max_bytes",
                   "client_loop_lag_p95_ms"):
        assert step[figure] >= 0, (figure, step)
    assert isinstance(step["client_bound"], bool)
    for figure in ("fps_min", "loss_pct", "server_cpu_pct"):
        assert isinstance(step[figure], (int, float)), (figure, step)
    if step["pass"]:  # on a busy box the one step may fail on fps or loss, and then stops
        assert result["capacity_participants"] == 2
        assert result["stopped_by"] == "max_participants"
    else:
        assert result["capacity_participants"] == 0
        assert result["stopped_by"] == step["reason"]


def test_rooms_are_dealt_to_several_client_processes() -> None:
    result = asyncio.run(run_capacity(small(max_participants=4, rooms_per_step=2,
                                            client_procs=2)))
    assert result["error"] is None, result.get("server_log_tail")
    assert result["client_processes"] == 2
    (step,) = result["steps"]
    assert step["participants"] == 4 and step["receive_legs"] == 4
    assert len(step["client_cpu_pct_per_process"]) == 2
    assert step["server_pcs"] == step["server_pcs_connected"] == 8
    assert step["frames_received"] > 0 and step["latency_ms"]["n"] > 0, step
    assert result["server_exit_code"] == 0  # both clients and the benchmark left cleanly


def test_transcoded_frames_are_decoded_to_read_their_stamps() -> None:
    result = asyncio.run(run_capacity(small(transcode=True)))
    assert result["error"] is None, result.get("server_log_tail")
    (step,) = result["steps"]
    assert step["transcoded_legs"] == 2, step
    # The server's own encoding is not the publisher's bitstream: every frame is decoded
    # (give or take the frame or two still in the decoder when the hold ended).
    assert step["frames_received"] > 0, step
    assert abs(step["frames_decoded_by_clients"] - step["frames_received"]) <= 2, step


def test_a_failing_step_stops_the_run_and_is_not_counted() -> None:
    # Asking for more fps than the bots send makes the very first step fail on fps.
    result = asyncio.run(run_capacity(small(min_fps=25.0, max_participants=4, hold_s=2.0,
                                            warmup_s=1.0, confirm=1)))
    assert result["error"] is None, result.get("server_log_tail")
    assert len(result["steps"]) == 1  # the second room was never added
    assert not result["steps"][0]["pass"]
    assert "first_attempt" in result["steps"][0]  # measured twice before it counted
    assert "fps" in result["stopped_by"]
    assert result["capacity_participants"] == 0
    assert result["server_exit_code"] == 0


def test_extrapolation_is_capped_by_the_loop_thread() -> None:
    rows = [{"participants": 4, "server_cpu_pct": 80.0, "server_loop_thread_pct": 40.0}]
    ext = extrapolate(rows, room_size=2)
    # 200 % / 20 % = 10 by CPU, 100 % / 10 % = 10 by loop: 10, in whole rooms
    assert ext["participants"] == 10
    rows = [{"participants": 4, "server_cpu_pct": 40.0, "server_loop_thread_pct": 60.0}]
    ext = extrapolate(rows, room_size=2)
    assert ext["participants"] == 6 and ext["limit"] == "loop thread"  # 100 / 15 = 6.7
    assert extrapolate([], 2)["participants"] == 0


def test_a_slow_readers_backlog_is_seen_in_its_own_sockets() -> None:
    import socket

    from bench._common import udp_socket_queues

    _, before = udp_socket_queues()
    reader = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    writer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        reader.bind(("127.0.0.1", 0))
        for _ in range(8):
            writer.sendto(b"x" * 1000, reader.getsockname())
        _, backlog = udp_socket_queues()
        assert backlog >= 8 * 1000 > before
    finally:
        reader.close()
        writer.close()
