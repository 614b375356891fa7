"""Resends of NACKed packets: at most once per RTT each, within a byte budget."""

from __future__ import annotations

import asyncio
import inspect

from aiortc import RTCRtpSender
from fakes import FakeClock

from videochat.compat.aiortc import RetransmitThrottle, throttle_retransmissions


def test_a_packet_is_resent_at_most_once_per_gap_and_within_the_budget() -> None:
    clock = FakeClock()
    budget: list[float | None] = [None]
    throttle = RetransmitThrottle(lambda: budget[0], lambda: 0.2, burst_s=0.5, clock=clock)
    # No estimate: no rate cap, but Chrome's repeated NACKs for one packet get one resend
    # per gap, not one per NACK.
    assert throttle.allow(1, 1200)
    clock.t += 0.05
    assert not throttle.allow(1, 1200)
    clock.t += 0.2
    assert throttle.allow(1, 1200)
    # 80 kbps: 10,000 bytes a second, a bucket of 5,000 bytes.
    budget[0] = 80_000
    clock.t += 1.0
    allowed = [throttle.allow(seq, 1000) for seq in range(100, 110)]
    assert allowed == [True] * 5 + [False] * 5
    clock.t += 0.3  # 3,000 bytes' worth of budget back
    assert [throttle.allow(seq, 1000) for seq in range(110, 115)] == [True] * 3 + [False] * 2
    assert throttle.resent == 10 and throttle.skipped == 8


def test_only_allowed_resends_reach_the_sender_and_one_throttle_per_sender() -> None:
    async def main() -> list[int]:
        sender = object.__new__(RTCRtpSender)  # no transport: only what the throttle touches
        history: dict[int, object] = {}
        sender._RTCRtpSender__rtp_history = history  # type: ignore[attr-defined]
        sent: list[int] = []

        async def original(seq: int) -> None:
            sent.append(seq)

        sender._retransmit = original  # type: ignore[method-assign]
        clock = FakeClock()
        throttle = RetransmitThrottle(lambda: None, lambda: 0.2, clock=clock)
        throttle_retransmissions(sender, throttle)
        throttle_retransmissions(sender, RetransmitThrottle(lambda: 0.0, lambda: 9.0))

        class Packet:
            def __init__(self, seq: int) -> None:
                self.sequence_number, self.payload = seq, b"x" * 1000

        history[5] = Packet(5)
        history[6 % 128] = Packet(6 + 128)  # overwritten in the history: gone
        for seq in (5, 5, 6, 7):
            await sender._retransmit(seq)
        return sent

    assert asyncio.run(main()) == [5]


def test_aiortc_resends_through_the_method_the_throttle_overrides() -> None:
    assert "await self._retransmit(seq)" in inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    retransmit = inspect.getsource(RTCRtpSender._retransmit)
    assert "self.__rtp_history.get(sequence_number % RTP_HISTORY_SIZE)" in retransmit


def test_a_small_budget_still_resends_a_full_packet_now_and_then() -> None:
    clock = FakeClock()
    throttle = RetransmitThrottle(lambda: 10_000.0, lambda: 0.2, burst_s=0.5, clock=clock)
    # 10 kbps: half a second's worth is 625 bytes, less than one packet.
    assert throttle.allow(1, 1200)
    assert not throttle.allow(2, 1200)
    clock.t += 1.0  # 1,250 bytes of budget back
    assert throttle.allow(2, 1200)
