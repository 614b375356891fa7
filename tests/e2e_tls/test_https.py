"""Served over HTTPS with Streamlit's own TLS (server.sslCertFile/sslKeyFile): a secure context
that gets the camera, the call page working over the TLS websocket, XSRF protection on."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for
from videochat.qa.harness import AppProcess, Browser, NetNamespace

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


def test_app_over_https_is_a_secure_context_with_camera(tls_app: AppProcess,
                                                         tls_browser: Browser) -> None:
    assert tls_app.url.startswith("https://")
    page = tls_browser.new_page(ignore_https_errors=True)
    try:
        page.goto(f"{tls_app.url}/call?room=tls&name=ana&join=1")
        # The page talks to the server over the TLS websocket: joining renders the call.
        wait_for(lambda: page.get_by_text("Room tls").count() > 0, 60,
                 "the call page over HTTPS")
        assert page.evaluate("() => window.isSecureContext")
        # Browsers give the camera only to secure origins: it must be available here.
        tracks = page.evaluate(
            "async () => (await navigator.mediaDevices.getUserMedia({video: true, audio: true}))"
            ".getTracks().map(t => t.kind).sort()")
        assert tracks == ["audio", "video"]
        config = Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml"
        assert "enableXsrfProtection = true" in config.read_text()
    finally:
        page.context.close()
