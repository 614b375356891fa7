"""docs/SETTINGS.md is exactly what the generator renders from `Settings.documentation()`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from videochat.settings import Settings
from videochat.settings.doc import render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SETTINGS.md"
REGENERATE = "python -m videochat.settings.doc > docs/SETTINGS.md"


def test_settings_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), f"docs/SETTINGS.md is out of date: run `{REGENERATE}`"


def test_every_setting_has_one_row() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) == len(fields(Settings))
    for f in fields(Settings):
        assert sum(f"| `{f.metadata['env']}` |" in row for row in rows) == 1, f.name


def test_defaults_are_shown_as_values() -> None:
    text = render()
    assert "| `VIDEOCHAT_STATE_DIR` | `'.videochat'` |" in text
    assert "PosixPath" not in text
    assert "| `REDIS_URL` | unset |" in text


def test_module_prints_the_reference() -> None:
    out = subprocess.run([sys.executable, "-m", "videochat.settings.doc"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout == render()
