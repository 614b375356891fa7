"""Receiver reports as they arrive, for the quality ladder.

aiortc keeps what a receiver reports about our stream (RTCP RR/SR report blocks: the fraction
of packets lost since its previous report) only as stats to poll. Polled once a second, a
report waits up to that second before the ladder sees it, on top of the browser's own report
interval (0.5-1.5 s for video). Chromium without `rtcp-rsize` (aiortc does not offer it) sends
every NACK in a compound packet that starts with a receiver report, so under loss fresh
reports arrive many times a second: acting on each as it arrives is what lets the ladder step
down within 2 s of the loss starting.

The hook wraps one sender's RTCP handler (the method aiortc's DTLS transport calls for each
RTCP packet routed to that sender, reached through `videochat.compat.aiortc`): aiortc's own
handling runs first and unchanged, then each report block about the sender's SSRC goes to the
callback, and so does each REMB (the receiver's estimate of the bitrate the path carries;
Chrome sends one with most video reports) that names it: the ladder steps to the rung that
fits it, and aiortc itself hands it to the sender's encoder (videochat.compat.encoders).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

from videochat.compat.aiortc import (
    last_sender_report,
    rtcp_handler,
    sender_ssrc,
    set_rtcp_handler,
)

logger = logging.getLogger(__name__)

# (kind, loss over about the last WINDOW_S, round-trip time in ms from this report or None)
ReportSink = Callable[[str, float, float | None], None]
# (kind, the receiver's estimated maximum bitrate in kbps, for all its streams together)
EstimateSink = Callable[[str, float], None]
_HOOKED = "_vc_report_sink"
WINDOW_S = 0.5
MIN_PACKETS = 10
MAX_WINDOW_S = 2.0
SENDER_REPORTS_KEPT = 16


class LossWindow:
    """Loss over about the last `window_s`, from the cumulative counters of successive report
    blocks (RFC 3550 6.4.1: extended highest sequence number and cumulative packets lost).

    A block's own `fraction_lost` covers only the time since that receiver's previous block;
    with reports riding on NACKs that is often 20-100 ms and a handful of packets, so it
    swings between 0 and 70 % under a steady 30 % loss and no run of them reads as steadily
    bad. The counters give the loss over any span of reports instead.
    """

    def __init__(self, window_s: float = WINDOW_S, min_packets: int = MIN_PACKETS,
                 max_window_s: float = MAX_WINDOW_S) -> None:
        self.window_s = window_s
        self.min_packets = min_packets
        self.max_window_s = max_window_s
        self._points: deque[tuple[float, int, int]] = deque()  # (at, highest seq, lost)

    def add(self, at: float, highest_sequence: int, packets_lost: int,
            fraction_lost: float) -> float:
        points = self._points
        if points and highest_sequence < points[-1][1]:
            points.clear()  # a new stream behind the same SSRC: start over
        points.append((at, highest_sequence, packets_lost))
        while len(points) > 2 and points[1][0] <= at - self.max_window_s:
            points.popleft()  # keep one point at or before the longest window's start
        # The newest base that spans both `window_s` and `min_packets` (a window of two or
        # three packets reads 0 % or 50 %), else the oldest kept. A longer span would be
        # steadier at 10 fps but slower to see loss begin at 30 fps; pausing video, the one
        # decision that needs a precise figure, is confirmed on the audio stream instead.
        base = points[0]
        for point in reversed(list(points)[:-1]):
            if at - point[0] >= self.window_s and highest_sequence - point[1] >= self.min_packets:
                base = point
                break
        expected = highest_sequence - base[1]
        if len(points) < 2 or expected <= 0:
            return fraction_lost
        lost = packets_lost - base[2]
        return min(1.0, max(0.0, lost / expected))


def watch_receiver_reports(pc: RTCPeerConnection, sink: ReportSink,
                           estimates: EstimateSink | None = None) -> int:
    """Call `sink(kind, loss, rtt_ms)` for every report block the remote end sends about one of
    `pc`'s senders, and `estimates(kind, kbps)` for every REMB naming one, on aiortc's loop.
    Returns how many senders are newly watched (each sender is hooked at most once; call again
    after adding tracks)."""
    hooked = 0
    for sender in pc.getSenders():
        if sender.track is None or getattr(sender, _HOOKED, None) is not None:
            continue
        _hook(sender, sender.track.kind, sink, estimates)
        hooked += 1
    if hooked:
        logger.debug("watching receiver reports of %d senders", hooked)
    return hooked


def _hook(sender: RTCRtpSender, kind: str, sink: ReportSink,
          estimates: EstimateSink | None = None,
          clock: Callable[[], float] = time.monotonic) -> None:
    original = rtcp_handler(sender)
    ssrc = sender_ssrc(sender)
    window = LossWindow()

    sent: dict[int, float] = {}  # our recent sender reports: middle NTP bits -> when sent

    async def handle(packet: Any) -> None:
        # aiortc keeps an RTT smoothed over reports (weight 0.85 for the old value: a path
        # whose RTT jumps to 700 ms read as under 500 ms for ~5 s), computed only when a
        # report answers the very last sender report — never once the RTT exceeds the ~1 s
        # between them. So note each sender report as we see it (reports arrive every
        # 0.05-1.5 s) and time every report against the one it answers.
        lsr, lsr_time = last_sender_report(sender)
        if lsr is not None and lsr_time is not None and lsr not in sent:
            sent[lsr] = lsr_time
            if len(sent) > SENDER_REPORTS_KEPT:
                del sent[next(iter(sent))]
        await original(packet)
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            for report in packet.reports:
                if report.ssrc == ssrc:
                    loss = window.add(clock(), report.highest_sequence, report.packets_lost,
                                      report.fraction_lost / 256.0)
                    rtt_ms: float | None = None
                    answered = sent.get(report.lsr) if report.lsr else None
                    if answered is not None:
                        rtt_ms = max(0.0, time.time() - answered - report.dlsr / 65536) * 1000
                    try:
                        sink(kind, loss, rtt_ms)
                    except Exception:  # a sink bug must not break aiortc's RTCP handling
                        logger.exception("receiver report sink failed")
        elif (estimates is not None and isinstance(packet, RtcpPsfbPacket)
              and packet.fmt == RTCP_PSFB_APP):
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:  # another application-layer feedback than REMB
                return
            if ssrc in ssrcs:
                try:
                    estimates(kind, bitrate / 1000.0)
                except Exception:
                    logger.exception("bitrate estimate sink failed")

    set_rtcp_handler(sender, handle)
    setattr(sender, _HOOKED, sink)  # noqa: B010
