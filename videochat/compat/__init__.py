"""The only code that touches private attributes of aiortc, aioice, Streamlit and
streamlit-webrtc: one module per library.

`install()` applies every process-wide aiortc/aioice patch, once, before the first peer
connection exists (no Streamlit needed: videochat/runtime.py calls it). The Streamlit and
streamlit-webrtc replacements need the Streamlit runtime and are applied by
videochat/ui/webrtc.py (`install()`, from the call page). tests/compat/ pins every private name
used here, so an upgrade of a pinned version fails loudly in one place.
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
