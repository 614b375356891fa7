"""The only code that touches private attributes of aiortc and aioice: one module per library.

`install()` applies every process-wide patch, once, before the first peer connection exists;
tests/compat/test_private_names.py pins every private name used here, so an upgrade of a pinned
version fails loudly in one place. (The Streamlit and streamlit-webrtc internals still live in
videochat/ui/webrtc.py, videochat/ui/wake.py and videochat/ui/navigation.py.)
"""

from __future__ import annotations

from collections.abc import Sequence

from videochat.compat import aioice, aiortc


def install(*, ice_addresses: Sequence[str], stun_retry_cap_s: float | None) -> None:
    """Patch aioice and aiortc for this process (idempotent)."""
    aioice.restrict_host_addresses(ice_addresses)
    aioice.cap_stun_retransmissions(stun_retry_cap_s)
    aiortc.track_peer_connections()  # before the first RTCPeerConnection: health counts them
    aiortc.end_remote_tracks_on_close()
