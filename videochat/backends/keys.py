"""Every Redis key and MongoDB collection name the app uses, in one place.

Redis keys all start with ``vc:``; a key that holds one room's or one command's data is a
function of it. The modules named beside each group own what is stored there and say how.
"""

from __future__ import annotations

from collections.abc import Callable


def _key(template: str) -> Callable[..., str]:
    """A key function: its arguments fill the template's `{}` in order."""
    def key(*parts: str) -> str:
        return template.format(*parts)

    return key


# --- Redis: presence and rooms (videochat/call/presence.py, videochat/call/access.py) ---------
PRESENCE_ROOMS = "vc:rooms"
presence_key = _key("vc:presence:{}")  # (room)
room_meta_key = _key("vc:room:{}:meta")  # (room)
passcode_failures_key = _key("vc:room:{}:passcode_failures")  # (room)


# --- Redis: fault commands (videochat/faults/control.py) --------------------------------------
FAULT_COMMANDS = "vc:faults:commands"
FAULTS_ACTIVE = "vc:faults:active"
FAULT_NODES = "vc:faults:nodes"
fault_ack_key = _key("vc:faults:ack:{}")  # (cmd_id)
fault_claim_key = _key("vc:faults:claim:{}")  # (fault_id)


# --- Redis: bot commands (videochat/bots/host.py) ---------------------------------------------
BOT_COMMANDS = "vc:bots:commands"
BOT_NODES = "vc:bots:nodes"
bot_ack_key = _key("vc:bots:ack:{}")  # (cmd_id)
bot_claim_key = _key("vc:bots:claim:{}")  # (cmd_id)


# --- Redis: app processes (videochat/qa/run_status.py) -----------------------------------------
APP_BOOTS = "vc:app:boots"  # node -> boot id of its current process


# --- Redis: chat (videochat/chat/) ------------------------------------------------------------
CHAT_ROOMS = "vc:chatrooms"
CHAT_PERSIST_GROUP = "persist"
chat_stream_key = _key("vc:chat:{}")  # (room)
chat_seq_key = _key("vc:chatseq:{}:{}")  # (room, origin)
chat_ledger_key = _key("vc:chatledger:{}")  # (room)
chat_rate_key = _key("vc:chatrate:{}:{}")  # (room, participant_id)
chat_hub_wake_key = _key("vc:chathub-wake:{}")  # (token)
chat_outbox_key = _key("vc:chatoutbox:{}")  # (client message id): videochat/ui/outbox.py


# --- MongoDB collections ----------------------------------------------------------------------
CALLS = "calls"  # videochat/call/call_log.py
PARTICIPANTS = "participants"  # videochat/call/call_log.py
ROOMS = "rooms"  # videochat/call/access.py
SAMPLES = "samples"  # videochat/metrics/store.py: minute buckets per leg
ROLLUPS = "samples_10s"  # videochat/metrics/store.py: summaries beside the buckets
EVENTS = "events"  # videochat/metrics/store.py: call events
PROCESS_HEALTH = "process_health"  # videochat/metrics/process_health.py
FAULTS = "faults"  # videochat/faults/control.py: fault audit
CHAT_MESSAGES = "chat_messages"  # videochat/chat/persister.py
QA_RUNS = "qa_runs"  # videochat/qa/report.py
