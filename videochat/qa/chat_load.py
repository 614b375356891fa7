"""Chat traffic of a QA run: the scenario's messages sent through the app's own chat path."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from videochat.exceptions import VideoChatError
from videochat.qa.assertions import (
    ChatLedger,
)
from videochat.qa.scenario import Scenario
from videochat.settings import Settings

if TYPE_CHECKING:
    from videochat.backends.services import Services

logger = logging.getLogger(__name__)



class ChatLoad:
    """Sends the scenario's chat messages through the app's chat path (ChatQueue: Redis Streams,
    persisted to MongoDB by the app's persister) from a thread; one ChatHub per receiver reads
    the room as a participant's page would."""

    def __init__(self, services: Services, settings: Settings, room: str, scenario: Scenario,
                 names: list[str]) -> None:
        from videochat.chat.hub import ChatHub
        from videochat.chat.queue import ChatQueue

        assert scenario.chat is not None
        self.services = services
        self.room = room
        self.rate = scenario.chat.messages_per_second
        self.senders = list(scenario.chat.senders) or names
        self.names = names
        self.sent: dict[str, str] = {}
        self.refused = 0
        self.queue = ChatQueue.from_settings(services.redis, services.db, settings)
        self.hubs = {name: ChatHub(services.redis, services.db) for name in names}
        for hub in self.hubs.values():
            hub.messages(room)  # start reading now, as an open page does
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="qa-chat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            sender = self.senders[n % len(self.senders)]
            try:
                msg = self.queue.send(self.room, f"qa-{sender}", sender, f"qa message {n}",
                                      message_id=uuid.uuid4().hex)
                self.sent[msg.id] = sender
            except VideoChatError as exc:  # refused by the app: reported, not a lost message
                self.refused += 1
                logger.warning("chat message %d refused: %s", n, exc)
            n += 1
            next_at += 1.0 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def ledger(self, timeout_s: float = 15.0) -> ChatLedger:
        from videochat.chat.ledger import COLLECTION
        from videochat.qa.assertions import chat_ledger

        self.queue.wait_persisted(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            delivered = {name: [m.id for m in hub.messages(self.room) if m.id in self.sent]
                         for name, hub in self.hubs.items()}
            stored = [str(d["_id"]) for d in self.services.db[COLLECTION].find(
                {"room": self.room}, {"_id": 1})]
            ledger = chat_ledger(self.sent, delivered, stored)
            if ledger.lost == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for hub in self.hubs.values():
            with contextlib.suppress(Exception):
                hub.close()
        with contextlib.suppress(Exception):
            self.queue.close()
        return ledger
