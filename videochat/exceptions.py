"""Every error the package raises on purpose.

    VideoChatError
    ├── SettingsError            a setting has a bad value (names the setting and the value)
    ├── ValidationError          user input broke a rule (room, name, chat text, fault command)
    │   ├── InvalidRoomName
    │   ├── InvalidDisplayName
    │   ├── InvalidChatMessage
    │   └── InvalidFaultCommand
    ├── RateLimited              too many chat messages or commands in a window
    ├── NotFound                 an unknown room, participant, scenario or run
    ├── AccessDenied             admin token missing or wrong
    │   └── RejoinRefused        a rejoin token that is forged, stale or for a seat now gone
    ├── BackendUnavailable       Redis or MongoDB cannot be reached (after retries)
    └── EmbeddedServerError      an embedded Valkey / SecantusDB child failed to start
"""

from __future__ import annotations


class VideoChatError(Exception):
    """Root of every error raised on purpose by this package."""


class SettingsError(VideoChatError):
    def __init__(self, name: str, value: object, rule: str) -> None:
        self.name = name
        self.value = value
        self.rule = rule
        super().__init__(f"setting {name}={value!r} is invalid: {rule}")


class ValidationError(VideoChatError, ValueError):
    """Input that breaks a rule; the message names the value and the rule."""

    def __init__(self, what: str, value: object, rule: str) -> None:
        self.what = what
        self.value = value
        self.rule = rule
        shown = value if not isinstance(value, str) or len(value) <= 60 else value[:57] + "..."
        super().__init__(f"{what} {shown!r} is invalid: {rule}")


class InvalidRoomName(ValidationError):
    pass


class InvalidDisplayName(ValidationError):
    pass


class InvalidChatMessage(ValidationError):
    pass


class InvalidFaultCommand(ValidationError):
    pass


class RateLimited(VideoChatError):
    def __init__(self, what: str, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        super().__init__(f"{what}: at most {limit} per {window_s:g} s; wait a moment and retry")


class NotFound(VideoChatError, LookupError):
    pass


class AccessDenied(VideoChatError, PermissionError):
    pass


class RejoinRefused(AccessDenied):
    """A tab's rejoin token does not give it back a seat; the message says why."""


class BackendUnavailable(VideoChatError, ConnectionError):
    pass


class EmbeddedServerError(VideoChatError, RuntimeError):
    pass
