"""ChatService (what an app process runs) and the stand-alone persister worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.chat.ledger import audit_room
from videochat.chat.queue import ChatQueue
from videochat.chat.service import ChatService
from videochat.exceptions import RateLimited
from videochat.settings import Settings

ROOM = "svc"
REPO = Path(__file__).resolve().parents[2]


def test_service_sends_delivers_persists_and_rate_limits(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    settings = Settings.from_mapping({"VIDEOCHAT_CHAT_RATE_PER_S": "3",
                                      "VIDEOCHAT_CHAT_MAX_LENGTH": "50"})
    chat = ChatService.start(redis_conn, mongo_db, settings)
    try:
        sent = [chat.queue.send(ROOM, "p1", "Pat", f"m{i}") for i in range(3)]
        with pytest.raises(RateLimited):
            chat.queue.send(ROOM, "p1", "Pat", "too fast")
        assert chat.queue.max_length == 50
        assert chat.queue.wait_persisted(20)
        assert [m.id for m in chat.hub.messages(ROOM)] == [m.id for m in sent]
        assert (chat.ledger(ROOM).sent, chat.ledger(ROOM).persisted) == (3, 3)
        assert chat.audit(ROOM).ok and chat.audit(ROOM).stored == 3
    finally:
        chat.stop(2.0)


def test_persister_worker_process(
    valkey_server: ValkeyProcess, secantus_server: SecantusProcess, redis_conn: redis.Redis,
    mongo_db: Any,
) -> None:
    env = {**os.environ, "REDIS_URL": valkey_server.url, "MONGODB_URI": secantus_server.url,
           "VIDEOCHAT_DB": mongo_db.name, "VIDEOCHAT_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "-m", "videochat.chat.persister"], env=env,
                              cwd=REPO)
    queue = ChatQueue(redis_conn, mongo_db)
    try:
        for i in range(10):
            queue.send(ROOM, "p1", "Pat", f"w{i}")
        assert queue.wait_persisted(30)
        assert audit_room(mongo_db, ROOM).stored == 10
    finally:
        queue.close(1.0)
        worker.terminate()
        assert worker.wait(10) == 0
