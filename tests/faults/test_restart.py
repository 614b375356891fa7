"""A restart of the app mid-fault ends the fault and closes its records (issue 17), on real
Valkey and SecantusDB."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import redis

from tests.faults.test_control import Node, wait_until
from tests.faults.test_control import nodes as nodes  # noqa: F401 - fixture re-used
from videochat.backends import keys
from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.events import CallEvent
from videochat.faults.control import ACTIVE, FaultControl
from videochat.faults.restart import end_interrupted_faults
from videochat.settings import Settings


def test_faults_of_the_restarted_node_end_and_their_records_close(
    nodes: list[Node], redis_conn: redis.Redis, mongo_db: Any, valkey_server: ValkeyProcess,
    secantus_server: SecantusProcess,
) -> None:
    old, other = nodes
    old.consumer.start()
    control = FaultControl(redis_conn, mongo_db, by="test")
    wait_until(lambda: control.listeners() == ["node0"])
    fid = control.inject({"kind": "loss", "room": "r1", "percent": 20, "duration_s": 120})
    wait_until(lambda: control.active()[0].applied_by == ["node0"])
    wait_until(lambda: (mongo_db[keys.FAULTS].find_one({"_id": fid}) or {}).get("applied_by")
               == ["node0"])
    wait_until(lambda: old.kinds() == ["fault_started"])
    mongo_db[keys.EVENTS].insert_many([e.to_doc() for e in old.events])  # what its store wrote
    old.consumer.stop()  # the process dies mid-fault

    # Meanwhile another process applies a fault of its own: not node0's to end.
    other.consumer.start()
    wait_until(lambda: "node1" in control.listeners())
    theirs = control.inject({"kind": "loss", "room": "r2", "percent": 5, "duration_s": 120})
    wait_until(lambda: "node1" in control.acks(control.last_cmd_id or ""))

    services = SimpleNamespace(redis=redis_conn, db=mongo_db, settings=Settings.from_mapping({
        "REDIS_URL": valkey_server.url, "MONGODB_URI": secantus_server.url}))
    emitted: list[CallEvent] = []
    assert end_interrupted_faults(services, "node0", emitted.append) == [fid]  # type: ignore[arg-type]

    assert set(redis_conn.hkeys(ACTIVE)) == {theirs}
    audit = mongo_db[keys.FAULTS].find_one({"_id": fid})
    assert audit["status"] == "stopped" and audit["ended_by"] == "server_restart"
    (ended,) = emitted
    assert (ended.kind, ended.room, ended.data["fault_id"], ended.data["reason"]) == (
        "fault_ended", "r1", fid, "server_restart")
    # The next process on node0 does not apply it again (the other node's fault, it does).
    again = Node(old.manager.loop, redis_conn, "node0", mongo_db)
    again.consumer.poll_once(block_ms=10)
    assert [a.fault.id for a in again.manager.active()] == [theirs]
    # Once closed, a later start finds nothing more to close.
    mongo_db[keys.EVENTS].insert_one(ended.to_doc())
    assert end_interrupted_faults(services, "node0", emitted.append) == []  # type: ignore[arg-type]
    assert len(emitted) == 1
