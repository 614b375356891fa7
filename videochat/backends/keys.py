"""Every Redis key and MongoDB collection name the app uses, in one place.

Redis keys all start with ``vc:``; a key that holds one room's or one command's data is a
function of it. The modules named beside each group own what is stored there and say how.
"""

from __future__ import annotations

# --- Redis: presence and rooms (videochat/call/presence.py, videochat/call/access.py) ---------
PRESENCE_ROOMS = "vc:rooms"


def presence_key(room: str) -> str:
    return f"vc:presence:{room}"


def room_meta_key(room: str) -> str:
    return f"vc:room:{room}:meta"


def passcode_failures_key(room: str) -> str:
    return f"vc:room:{room}:passcode_failures"


# --- Redis: fault commands (videochat/faults/control.py) --------------------------------------
FAULT_COMMANDS = "vc:faults:commands"
FAULTS_ACTIVE = "vc:faults:active"
FAULT_NODES = "vc:faults:nodes"


def fault_ack_key(cmd_id: str) -> str:
    return f"vc:faults:ack:{cmd_id}"


def fault_claim_key(fault_id: str) -> str:
    return f"vc:faults:claim:{fault_id}"


# --- Redis: bot commands (videochat/bots/host.py) ---------------------------------------------
BOT_COMMANDS = "vc:bots:commands"
BOT_NODES = "vc:bots:nodes"


def bot_ack_key(cmd_id: str) -> str:
    return f"vc:bots:ack:{cmd_id}"


def bot_claim_key(cmd_id: str) -> str:
    return f"vc:bots:claim:{cmd_id}"


# --- Redis: chat (videochat/chat/) ------------------------------------------------------------
CHAT_ROOMS = "vc:chatrooms"
CHAT_PERSIST_GROUP = "persist"


def chat_stream_key(room: str) -> str:
    return f"vc:chat:{room}"


def chat_seq_key(room: str, origin: str) -> str:
    return f"vc:chatseq:{room}:{origin}"


def chat_ledger_key(room: str) -> str:
    return f"vc:chatledger:{room}"


def chat_rate_key(room: str, participant_id: str) -> str:
    return f"vc:chatrate:{room}:{participant_id}"


def chat_hub_wake_key(token: str) -> str:
    return f"vc:chathub-wake:{token}"


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
