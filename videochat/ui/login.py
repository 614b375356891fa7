"""Optional sign-in through Streamlit's `st.login` (OIDC), when `Settings.require_login` is on.

Streamlit does the OIDC flow itself (routes /auth/login, /oauth2callback, /auth/logout and a
signed identity cookie) from the `[auth]` section of `.streamlit/secrets.toml`; this module only
decides, per run, whether the page may render. `plan_login` is the whole decision and needs no
Streamlit run; `require_login` draws it. With sign-in off nothing here draws anything.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import streamlit as st

from videochat.exceptions import InvalidDisplayName
from videochat.media.participant import validate_display_name
from videochat.settings import DEFAULT_PROVIDER, Settings
from videochat.ui import navigation
from videochat.ui.state import get_settings

logger = logging.getLogger(__name__)

# What Streamlit's login routes import: Authlib, and httpx for its Starlette client.
AUTH_PACKAGES = ("authlib", "httpx")
_NAME_CLAIMS = ("name", "preferred_username", "nickname", "given_name")
_NOT_IN_NAME = re.compile(r"[^\w .'-]")  # roughly participant.NAME_RULE; validated after


@dataclass(frozen=True)
class LoginView:
    """What to show for this run.

    `open`: sign-in is off, draw nothing. `signed_in`: render the page, with who is signed in
    in the sidebar. `sign_in`: show the sign-in screen only. `broken`: sign-in is on but cannot
    work here (`problem` says why); the page must not render either.
    """

    action: Literal["open", "signed_in", "sign_in", "broken"]
    providers: tuple[str, ...] = ()
    name: str | None = None
    email: str | None = None
    problem: str | None = None

    @property
    def may_render(self) -> bool:
        return self.action in ("open", "signed_in")


def plan_login(
    settings: Settings, user: Mapping[str, Any], missing_packages: Iterable[str] = ()
) -> LoginView:
    """Decide from the settings and `st.user` (as a plain mapping) what this run shows."""
    if not settings.require_login:
        return LoginView("open")
    missing = tuple(missing_packages)
    if missing:
        return LoginView(
            "broken", settings.login_providers,
            problem=f"sign-in is configured but the server lacks {', '.join(missing)} "
            "(pip install Authlib httpx, or streamlit[auth])",
        )
    if user.get("is_logged_in") is not True:
        return LoginView("sign_in", settings.login_providers)
    email = user.get("email")
    return LoginView(
        "signed_in", settings.login_providers,
        name=display_name_for(user),
        email=email if isinstance(email, str) and email else None,
    )


def display_name_for(user: Mapping[str, Any]) -> str | None:
    """A valid call display name from the identity claims, or None if none can be made.

    Tries name, preferred_username, nickname, given_name, then the e-mail's local part; drops
    characters the join form refuses and cuts to 32 characters at a word boundary if it can.
    """
    candidates = [user.get(claim) for claim in _NAME_CLAIMS]
    email = user.get("email")
    if isinstance(email, str) and "@" in email:
        candidates.append(email.split("@", 1)[0].replace(".", " ").replace("_", " "))
    for raw in candidates:
        if not isinstance(raw, str):
            continue
        text = unicodedata.normalize("NFC", raw)
        text = " ".join(_NOT_IN_NAME.sub(" ", text).split())
        if len(text) > 32:
            cut = text[:33].rsplit(" ", 1)[0] if " " in text[:33] else text[:32]
            text = cut.strip()
        try:
            return validate_display_name(text)
        except InvalidDisplayName:
            continue
    return None


def provider_label(provider: str) -> str:
    if provider == DEFAULT_PROVIDER:
        return "Sign in"
    return f"Sign in with {provider.replace('-', ' ').title()}"


def missing_auth_packages() -> tuple[str, ...]:
    return _missing(AUTH_PACKAGES)


@functools.cache  # the gate runs on every rerun of a call; sys.path is not rescanned each time
def _missing(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in names if importlib.util.find_spec(name) is None)


def _user_mapping() -> dict[str, Any]:
    try:
        return {k: v for k, v in st.user.to_dict().items() if k != "tokens"}
    except Exception:  # no script run context or a host without st.user: nobody is signed in
        logger.debug("st.user unavailable", exc_info=True)
        return {}


def gate(settings: Settings | None = None) -> bool:
    """Draw the sign-in screen or the signed-in sidebar; True when the page may render."""
    settings = get_settings() if settings is None else settings
    if not settings.require_login:
        return True  # cheapest path first: sign-in off touches nothing
    view = plan_login(settings, _user_mapping(), missing_auth_packages())
    if view.action != "signed_in":
        # In a fresh process Streamlit is still in legacy pages/ mode until st.navigation runs,
        # and would list pages/ in the sidebar of the sign-in screen: leave that mode first.
        navigation.ensure_v2()
    if view.action == "signed_in":
        _signed_in_sidebar(view)
        return True
    if view.action == "broken":
        logger.error("sign-in unavailable: %s", view.problem)
        st.title("Sign-in unavailable")
        st.error(f"This app requires sign-in, but {view.problem}.")
        return False
    _sign_in_screen(view)
    return False


def require_login(settings: Settings | None = None) -> None:
    """Stop the script run here unless the visitor may see the page (see `gate`)."""
    if not gate(settings):
        st.stop()


def signed_in_name(settings: Settings | None = None) -> str:
    """The signed-in user's display name for the join form; "" when sign-in is off or absent."""
    settings = get_settings() if settings is None else settings
    if not settings.require_login:
        return ""
    view = plan_login(settings, _user_mapping())
    if view.action != "signed_in":
        return ""
    return view.name or ""


def _sign_in_screen(view: LoginView) -> None:
    st.title("Sign in")
    st.write("This video chat is for signed-in users. You will be sent to your identity "
             "provider and brought back here.")
    room = st.query_params.get("room")
    if room:
        # Streamlit's OIDC callback always lands on the app's start page: the link is lost.
        st.info(f"You were invited to room **{room}**: after signing in, open your "
                "invitation link again (you stay signed in).")
    for provider in view.providers:
        st.button(
            provider_label(provider), key=f"vc_login_{provider}", type="primary",
            on_click=st.login, args=(None if provider == DEFAULT_PROVIDER else provider,),
        )


def _signed_in_sidebar(view: LoginView) -> None:
    who = " · ".join(p for p in (view.name, view.email) if p) or "signed in"
    st.sidebar.caption(f"Signed in as **{who}**")
    st.sidebar.button("Sign out", key="vc_logout", on_click=st.logout)
