"""The pre-call check finds the fake camera and microphone and gives a plain verdict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.browser


def check_text(page: Any) -> str:
    for frame in page.frames:
        try:
            text = frame.evaluate("() => (document.getElementById('out') || {}).textContent")
        except Exception:  # noqa: BLE001 - frames come and go
            continue
        if text:
            return str(text)
    return ""


def test_precall_check_reports_devices_candidates_and_verdict(
    open_page: Callable[[str], Any]
) -> None:
    page = open_page("/call")
    wait_for(lambda: page.get_by_text("Pre-call check").count() > 0, 30, "the join page")
    page.get_by_text("Pre-call check").click()
    page.get_by_role("button", name="Run the check").click()
    wait_for(lambda: "Verdict:" in check_text(page), 30, "the pre-call verdict")
    text = check_text(page)
    print(text)
    assert "Camera: found" in text and "Microphone: found" in text
    assert "ICE gathering:" in text and "host " in text
    assert "Verdict: Ready" in text
