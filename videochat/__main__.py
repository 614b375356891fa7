"""``python -m videochat``: see `videochat.cli`."""

from __future__ import annotations

from videochat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
