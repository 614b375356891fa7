"""ChatService: the chat objects one app process runs, started and stopped together.

Every process that shows chat runs one queue (its outbox), one hub (its reader) and one persister
(a consumer in the `persist` group; several processes share the work and cover each other's
crashes). The app keeps one per process, e.g. in `st.cache_resource`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from pymongo.database import Database

from videochat.chat.hub import ChatHub
from videochat.chat.ledger import ChatAudit, ChatLedger
from videochat.chat.persister import ChatPersister
from videochat.chat.queue import ChatQueue
from videochat.settings import Settings

logger = logging.getLogger(__name__)

MongoDoc = dict[str, Any]


@dataclass
class ChatService:
    queue: ChatQueue
    hub: ChatHub
    persister: ChatPersister

    @classmethod
    def start(
        cls, client: redis.Redis, db: Database[MongoDoc], settings: Settings
    ) -> ChatService:
        service = cls(
            queue=ChatQueue.from_settings(client, db, settings),
            hub=ChatHub(client, db),
            persister=ChatPersister(client, db),
        )
        service.persister.start()
        logger.info("chat service started (consumer %s)", service.persister.consumer)
        return service

    def ledger(self, room: str) -> ChatLedger:
        """Sent / delivered / persisted / duplicates suppressed, for diagnostics and QA."""
        return self.queue.ledger(room)

    def audit(self, room: str) -> ChatAudit:
        """What MongoDB holds for the room: stored, duplicates, missing (QA's "0 lost")."""
        return self.queue.audit(room)

    def stop(self, timeout: float = 5.0) -> None:
        self.queue.close(timeout)
        self.persister.stop(timeout)
        self.hub.close(timeout)
