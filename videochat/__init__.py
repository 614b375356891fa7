"""Fault-tolerant video chat with QA and diagnostics tooling."""

from __future__ import annotations

import logging

from videochat.exceptions import VideoChatError

__version__ = "0.1.0"
__all__ = ["VideoChatError", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
