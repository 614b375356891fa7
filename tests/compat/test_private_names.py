"""Every private name of aiortc and aioice that videochat/compat/ uses still exists.

Fails loudly when an upgrade moves one (versions are pinned in requirements.txt); the module
docstrings of videochat/compat/aiortc.py and videochat/compat/aioice.py say why each is used.
"""

from __future__ import annotations

import inspect

import aioice.ice
import aioice.stun
from aioice import Connection
from aiortc import RTCIceTransport, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RemoteStreamTrack

from videochat import compat


def test_aioice_internals_we_patch() -> None:
    # videochat/compat/aioice.py: host addresses, STUN retransmissions
    assert callable(aioice.ice.get_host_addresses)
    assert hasattr(aioice.stun.Transaction, "_Transaction__retry")
    assert aioice.stun.RETRY_MAX == 6 and aioice.stun.RETRY_RTO == 0.5
    init = inspect.getsource(aioice.stun.Transaction.__init__)
    assert "self.__timeout_delay" in init and "self.__tries_max" in init


def test_aioice_connection_keeps_its_protocols() -> None:
    # videochat/compat/aioice.py: connection_protocols, the fault injector's blackout seam
    assert "self._protocols" in inspect.getsource(Connection.__init__)
    for name in ("datagram_received", "send_data", "send_stun"):
        assert callable(getattr(aioice.ice.StunProtocol, name)), name


def test_aiortc_internals_the_receiver_report_hook_wraps() -> None:
    # videochat/call/rtcp.py overrides a sender's RTCP handler per instance: the DTLS transport must
    # look it up on the instance at each packet, and the sender must keep its SSRC in `_ssrc`.
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    assert inspect.iscoroutinefunction(RTCRtpSender._handle_rtcp_packet)
    assert "recipient._handle_rtcp_packet(packet)" in inspect.getsource(
        RTCDtlsTransport._handle_rtcp_data)
    assert "self._ssrc" in inspect.getsource(RTCRtpSender.__init__)
    # the sender report a receiver report answers: read for an unsmoothed round-trip time
    assert "self.__lsr = " in inspect.getsource(RTCRtpSender)
    assert "self.__lsr_time = time.time()" in inspect.getsource(RTCRtpSender)


def test_aiortc_internals_of_the_inbound_streams() -> None:
    # videochat/compat/aiortc.py: remote_streams, read by the stats sampler
    src = inspect.getsource(RTCRtpReceiver.__init__)
    assert "self.__remote_streams" in src and "self.__rtx_ssrc" in src


def test_aiortc_internals_of_the_ice_transport_seam() -> None:
    # videochat/compat/aiortc.py: ice_io, set_ice_io, ice_connection (the fault injector)
    init = inspect.getsource(RTCIceTransport.__init__)
    assert "self._recv = self._connection.recv" in init
    assert "self._send = self._connection.send" in init
    dtls = inspect.getsource(RTCDtlsTransport)
    assert "self.transport._send(" in dtls and "self.transport._recv()" in dtls


def test_aiortc_internals_the_process_wide_patches_rely_on() -> None:
    # videochat/compat/aiortc.py: track_peer_connections, end_remote_tracks_on_close
    assert inspect.iscoroutinefunction(RTCPeerConnection.close)
    assert "self._queue" in inspect.getsource(RemoteStreamTrack.__init__)


def test_install_is_idempotent() -> None:
    compat.install(ice_addresses=[], stun_retry_cap_s=None)
    compat.install(ice_addresses=[], stun_retry_cap_s=None)
    assert compat.aiortc.peer_connections_tracked()
    assert compat.aioice.restricted_addresses() == ()


def test_aiortc_internals_forwarding_relies_on() -> None:
    # videochat/compat/aiortc.py: tap_encoded_frames, on_picture_loss, request_keyframe,
    # on_keyframe_request, receiver_of (videochat/media/relay.py forwards encoded frames)
    from aiortc.contrib.media import RelayStreamTrack

    init = inspect.getsource(RTCRtpReceiver.__init__)
    assert "self.__decoder_queue: queue.Queue = queue.Queue()" in init
    handle = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put((codec, encoded_frame))" in handle
    assert "await self._send_rtcp_pli(packet.ssrc)" in handle
    assert inspect.iscoroutinefunction(RTCRtpReceiver._send_rtcp_pli)
    assert "self._send_keyframe()" in inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    assert "self._source" in inspect.getsource(RelayStreamTrack.__init__)
    # BoundedMediaRelay replaces a buffered proxy's queue, which MediaRelay fills
    from aiortc.contrib.media import MediaRelay

    assert "self._queue = asyncio.Queue()" in inspect.getsource(RelayStreamTrack.__init__)
    assert "proxy._queue.put_nowait(frame)" in inspect.getsource(MediaRelay)
    # aiortc's sender packs an av.Packet instead of encoding it: what forwarding sends
    assert "self.__encoder.pack(data)" in inspect.getsource(RTCRtpSender._next_encoded_frame)


def test_aiortc_internals_the_rung_encoders_rely_on() -> None:
    # videochat/compat/encoders.py: the sender's encoder slot, filled on the first frame unless
    # set; REMB handed to `encoder.target_bitrate`; libvpx's buffer size from the private
    # target; a rebuild on a >10 % change; the negotiated codec in the transceiver's `_codecs`.
    from aiortc.codecs.vpx import Vp8Encoder
    from aiortc.rtcrtptransceiver import RTCRtpTransceiver

    sender = inspect.getsource(RTCRtpSender)
    assert "self.__encoder: Optional[Encoder] = None" in sender
    assert "if self.__encoder is None:\n            self.__encoder = get_encoder(codec)" in sender
    assert "self.__encoder.target_bitrate = bitrate" in sender
    encoder = inspect.getsource(Vp8Encoder)
    assert '"bufsize": str(self.__target_bitrate)' in encoder
    assert "self.codec.bit_rate = self.target_bitrate" in encoder
    assert "self.picture_id" in encoder
    assert "self._codecs: list[RTCRtpCodecParameters] = []" in inspect.getsource(
        RTCRtpTransceiver.__init__)
