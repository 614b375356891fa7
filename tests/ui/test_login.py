"""Optional OIDC sign-in: the decision (no Streamlit run) and the gate drawn by AppTest.

st.login itself needs a real identity provider, so these tests stop at the sign-in screen and
check that its button calls st.login with the right provider; no network is used.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit
from streamlit.testing.v1 import AppTest

from videochat.media.participant import validate_display_name
from videochat.settings import Settings
from videochat.ui import login
from videochat.ui.login import display_name_for, plan_login, provider_label

AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "0123456789abcdef0123456789abcdef"}
PROVIDER = {"client_id": "id", "client_secret": "secret",
            "server_metadata_url": "https://idp.example.org/.well-known/openid-configuration"}
OFF = Settings.from_mapping({})
ONE = Settings.from_mapping({"auth": {**AUTH, **PROVIDER}})
TWO = Settings.from_mapping({"auth": {**AUTH, "google": PROVIDER, "okta": PROVIDER}})
SIGNED_IN = {"is_logged_in": True, "name": "Ada Lovelace", "email": "ada@example.org",
             "sub": "123"}


# --- the decision ------------------------------------------------------------------------------


def test_sign_in_off_changes_nothing_whoever_the_user_is() -> None:
    for user in ({}, {"is_logged_in": False}, SIGNED_IN, {"email": "x@y.z"}):
        view = plan_login(OFF, user, missing_packages=("authlib",))
        assert view.action == "open" and view.may_render
        assert view.name is None and view.providers == ()


@pytest.mark.parametrize("user", [{}, {"is_logged_in": False}, {"is_logged_in": "true"},
                                  {"email": "ada@example.org", "name": "Ada"}])
def test_not_signed_in_gets_the_sign_in_screen(user: dict[str, Any]) -> None:
    view = plan_login(TWO, user)
    assert view.action == "sign_in" and not view.may_render
    assert view.providers == ("google", "okta")


def test_signed_in_user_is_named() -> None:
    view = plan_login(ONE, SIGNED_IN)
    assert view.action == "signed_in" and view.may_render
    assert (view.name, view.email) == ("Ada Lovelace", "ada@example.org")


def test_missing_auth_packages_block_the_page_and_say_which() -> None:
    view = plan_login(ONE, SIGNED_IN, missing_packages=("authlib", "httpx"))
    assert view.action == "broken" and not view.may_render
    assert view.problem is not None and "authlib, httpx" in view.problem


def test_auth_packages_are_installed_here() -> None:
    # The app's sign-in needs them at run time; the requirement must not silently go away.
    assert login.missing_auth_packages() == ()


@pytest.mark.parametrize(("claims", "expected"), [
    ({"name": "Ada Lovelace"}, "Ada Lovelace"),
    ({"name": "José Müller-Lüdenscheidt"}, "José Müller-Lüdenscheidt"),
    ({"name": "Dr. Grace (Ops) Hopper"}, "Dr. Grace Ops Hopper"),
    ({"name": "  Alan   Turing  "}, "Alan Turing"),
    ({"name": "Hubert Blaine Wolfeschlegelsteinhausenbergerdorff"}, "Hubert Blaine"),
    ({"name": "Wolfeschlegelsteinhausenbergerdorffvoralternwaren"},
     "Wolfeschlegelsteinhausenbergerdo"),
    ({"name": "!!!", "preferred_username": "grace_h"}, "grace_h"),
    ({"given_name": "Linus"}, "Linus"),
    ({"email": "barbara.liskov@example.org"}, "barbara liskov"),
    ({"name": "???", "email": "@@"}, None),
    ({"sub": "only-a-subject"}, None),
])
def test_display_name_from_claims_is_valid_for_the_join_form(
    claims: dict[str, Any], expected: str | None
) -> None:
    name = display_name_for(claims)
    assert name == expected
    if name is not None:
        assert validate_display_name(name) == name


def test_provider_labels() -> None:
    assert provider_label("default") == "Sign in"
    assert provider_label("google") == "Sign in with Google"
    assert provider_label("azure-ad") == "Sign in with Azure Ad"


# --- the gate, drawn by Streamlit's AppTest (no server, no browser) ----------------------------


def _gated_app(settings: object) -> None:
    # Mirrors app.py: the gate runs before st.navigation. AppTest runs this body as a script of
    # its own (no module globals), hence the imports inside and the builtin-only annotation.
    import streamlit as st

    from videochat.settings import Settings
    from videochat.ui.login import require_login, signed_in_name

    assert isinstance(settings, Settings)
    require_login(settings)

    def call() -> None:
        st.write("call page body")
        st.write(f"default name: {signed_in_name(settings)!r}")

    def other() -> None:
        st.write("other page body")

    st.navigation([st.Page(call, title="Call", url_path="call", default=True),
                   st.Page(other, title="Other", url_path="other")]).run()


def _app(settings: Settings, user: dict[str, Any] | None = None) -> AppTest:
    at = AppTest.from_function(_gated_app, args=(settings,), default_timeout=60)
    if user is not None:
        at.user = user
    return at


def _texts(at: AppTest) -> str:
    return " | ".join(str(m.value) for m in at.markdown)


def test_app_without_sign_in_renders_the_page_untouched() -> None:
    at = _app(OFF, {"email": "someone@example.org"}).run()
    assert not at.exception
    assert "call page body" in _texts(at)
    assert "default name: ''" in _texts(at)
    assert not at.title and not at.button and not at.sidebar.caption


def test_app_signed_out_shows_only_the_sign_in_screen() -> None:
    at = _app(TWO, {"is_logged_in": False})
    at.query_params["room"] = "standup"
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Sign in"]
    assert [b.label for b in at.button] == ["Sign in with Google", "Sign in with Okta"]
    assert "page body" not in _texts(at)
    assert any("standup" in str(i.value) for i in at.info)


def test_sign_in_button_calls_st_login_with_its_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    monkeypatch.setattr(streamlit, "login", calls.append)
    at = _app(TWO, {"is_logged_in": False}).run()
    at.button(key="vc_login_okta").click().run()
    assert calls == ["okta"]
    at = _app(ONE, {"is_logged_in": False}).run()
    assert [b.label for b in at.button] == ["Sign in"]
    at.button(key="vc_login_default").click().run()
    assert calls == ["okta", None]  # None: st.login's own [auth] provider


def test_app_signed_in_renders_the_page_with_who_and_sign_out() -> None:
    at = _app(ONE, dict(SIGNED_IN)).run()
    assert not at.exception
    assert "call page body" in _texts(at)
    assert "default name: 'Ada Lovelace'" in _texts(at)
    assert "Ada Lovelace · ada@example.org" in at.sidebar.caption[0].value
    at.sidebar.button(key="vc_logout").click().run()
    assert at.user == {"is_logged_in": False}
    assert [t.value for t in at.title] == ["Sign in"]
    assert "page body" not in _texts(at)


def test_app_without_auth_packages_refuses_to_render(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login, "AUTH_PACKAGES", ("authlib", "no_such_package_for_videochat"))
    at = _app(ONE, dict(SIGNED_IN)).run()
    assert [t.value for t in at.title] == ["Sign-in unavailable"]
    assert "no_such_package_for_videochat" in at.error[0].value
    assert "page body" not in _texts(at)


# --- app.py itself: the gate is wired before navigation ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def signin_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory whose .streamlit/secrets.toml configures sign-in; app.py's
    process-wide side effects (cached settings, Streamlit secrets, log handler) are undone."""
    from streamlit.runtime.secrets import secrets_singleton

    from videochat.ui.state import get_settings

    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        "[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in {**AUTH, **PROVIDER}.items()))
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("VIDEOCHAT_")]:
        monkeypatch.delenv(name)
    log = logging.getLogger("videochat")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    get_settings.clear()
    secrets_singleton._reset()
    yield tmp_path
    get_settings.clear()
    secrets_singleton._reset()
    log.handlers[:] = handlers
    log.propagate, log.level = propagate, level


def test_app_py_stops_at_the_sign_in_screen_before_any_page(signin_checkout: Path) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.user = {"is_logged_in": False}
    at.query_params["room"] = "standup"
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Sign in"]
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.text_input  # no join form: the call page never ran


def test_secrets_example_auth_block_is_accepted() -> None:
    lines = (ROOT / ".streamlit" / "secrets.example.toml").read_text().splitlines()
    start = lines.index("# [auth]")
    block = [line.removeprefix("# ") for line in lines[start:]
             if not line.startswith("# or named")]
    settings = Settings.from_mapping(tomllib.loads("\n".join(block)))
    assert settings.require_login is True
    assert settings.login_providers == ("default", "google")
