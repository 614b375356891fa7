"""Receiver reports as they arrive, for the quality ladder.

aiortc keeps what a receiver reports about our stream (RTCP RR/SR report blocks: the fraction
of packets lost since its previous report) only as stats to poll. Polled once a second, a
report waits up to that second before the ladder sees it, on top of the browser's own report
interval (0.5-1.5 s for video). Chromium without `rtcp-rsize` (aiortc does not offer it) sends
every NACK in a compound packet that starts with a receiver report, so under loss fresh
reports arrive many times a second: acting on each as it arrives is what lets the ladder step
down within 2 s of the loss starting.

The hook wraps one sender's `_handle_rtcp_packet` (the method aiortc's DTLS transport calls for
each RTCP packet routed to that sender): aiortc's own handling runs first and unchanged, then
each report block about the sender's SSRC goes to the callback. tests/test_wake.py checks the
private names this relies on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

logger = logging.getLogger(__name__)

ReportSink = Callable[[str, float], None]  # (kind, fraction lost in [0, 1])
_HOOKED = "_vc_report_sink"


def watch_receiver_reports(pc: RTCPeerConnection, sink: ReportSink) -> int:
    """Call `sink(kind, fraction_lost)` for every report block the remote end sends about one of
    `pc`'s senders, on aiortc's loop. Returns how many senders are newly watched (each sender is
    hooked at most once; call again after adding tracks)."""
    hooked = 0
    for sender in pc.getSenders():
        if sender.track is None or getattr(sender, _HOOKED, None) is not None:
            continue
        _hook(sender, sender.track.kind, sink)
        hooked += 1
    return hooked


def _hook(sender: RTCRtpSender, kind: str, sink: ReportSink) -> None:
    original: Callable[[Any], Awaitable[None]] = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        await original(packet)
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    try:
                        sink(kind, report.fraction_lost / 256.0)
                    except Exception:  # a sink bug must not break aiortc's RTCP handling
                        logger.exception("receiver report sink failed")

    setattr(sender, "_handle_rtcp_packet", handle)  # noqa: B010 - an instance override
    setattr(sender, _HOOKED, sink)  # noqa: B010
