"""Served over HTTPS with Streamlit's own TLS (server.sslCertFile/sslKeyFile): a secure context
for the camera, XSRF protection on, and a two-person call that works through it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for
from videochat.qa.harness import AppProcess, Browser, NetNamespace, first_progress_after

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def tls_app(tls_netns: NetNamespace,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    app = AppProcess(folder / "state", port=8613, netns=tls_netns, tls=(cert, key),
                     env={"VIDEOCHAT_CAPTURE": "320x240@15"})
    app.start()
    yield app
    app.stop()


def test_call_over_https_is_a_secure_context(tls_app: AppProcess, tls_browser: Browser) -> None:
    assert tls_app.url.startswith("https://")
    pages = []
    for name in ("ana", "bob"):
        page = tls_browser.new_page(ignore_https_errors=True)
        page.goto(f"{tls_app.url}/call?room=tls&name={name}&join=1")
        pages.append(page)
    try:
        assert all(p.evaluate("() => window.isSecureContext") for p in pages)
        wait_for(lambda: all(first_progress_after(p, time.time() - 2, 3) for p in pages), 60,
                 "both participants receiving video over the HTTPS-served app")
        config = Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml"
        assert "enableXsrfProtection = true" in config.read_text()
    finally:
        for page in pages:
            page.context.close()
