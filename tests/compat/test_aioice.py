from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aioice.ice
import aioice.stun
import pytest

from videochat.compat import aioice as ice


class Recorder:
    def __init__(self) -> None:
        self.sent: list[float] = []

    def send_stun(self, message: object, addr: object) -> None:
        self.sent.append(asyncio.get_running_loop().time())


def sends_within(seconds: float) -> int:
    async def main() -> int:
        proto = Recorder()
        request = aioice.stun.Message(aioice.stun.Method.BINDING, aioice.stun.Class.REQUEST)
        tx = aioice.stun.Transaction(request, ("127.0.0.1", 9), proto)
        task = asyncio.ensure_future(tx.run())
        await asyncio.sleep(seconds)
        task.cancel()
        return len(proto.sent)

    return asyncio.run(main())


@pytest.fixture
def restore() -> Iterator[None]:
    # Before as well as after: a runtime built earlier in the session (tests/test_runtime.py)
    # leaves its process-wide cap installed.
    ice.cap_stun_retransmissions(None)
    ice.restrict_host_addresses([])
    yield
    ice.cap_stun_retransmissions(None)
    ice.restrict_host_addresses([])


def test_capped_retransmissions_retry_steadily(restore: None) -> None:
    assert sends_within(1.1) == 2  # aioice's own: t=0 and t=0.5, next at 1.5
    ice.cap_stun_retransmissions(0.25)
    assert sends_within(1.1) == 5  # 0, .25, .5, .75, 1.0
    ice.cap_stun_retransmissions(None)
    assert sends_within(1.1) == 2


def test_host_addresses_can_be_restricted_to_loopback(restore: None) -> None:
    ice.restrict_host_addresses(["127.0.0.1", "::1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    ice.restrict_host_addresses([])
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)


def test_bad_address_is_refused(restore: None) -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        ice.restrict_host_addresses(["not-an-ip"])
