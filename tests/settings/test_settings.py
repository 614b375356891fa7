from __future__ import annotations

from pathlib import Path

import pytest

from videochat.exceptions import SettingsError
from videochat.settings import Settings


def test_defaults_use_embedded_servers_and_no_public_stun() -> None:
    s = Settings.load({}, secrets_file=None)
    assert s.embedded_redis and s.embedded_mongo
    assert s.rtc_configuration() == {"iceServers": []}
    assert s.dev_mode and s.check_admin(None)


def test_environment_wins_over_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('REDIS_URL = "redis://from-file:6379/0"\nVIDEOCHAT_DB = "filedb"\n')
    s = Settings.load({"REDIS_URL": "redis://from-env:6379/1"}, secrets_file=secrets)
    assert s.redis_url == "redis://from-env:6379/1"
    assert s.db_name == "filedb"


def test_ice_settings() -> None:
    s = Settings.load({
        "VIDEOCHAT_ICE_SERVERS": '[{"urls": "turn:turn.example:3478", "username": "u", '
                                 '"credential": "p"}]',
        "VIDEOCHAT_ICE_ADDRESSES": "127.0.0.1, ::1",
        "VIDEOCHAT_ICE_TRANSPORT_POLICY": "relay",
    }, secrets_file=None)
    assert s.ice_addresses == ("127.0.0.1", "::1")
    assert s.rtc_configuration() == {
        "iceServers": [{"urls": ["turn:turn.example:3478"], "username": "u", "credential": "p"}],
        "iceTransportPolicy": "relay",
    }


@pytest.mark.parametrize(("name", "value", "message"), [
    ("REDIS_URL", "http://x", "REDIS_URL='http://x'"),
    ("MONGODB_URI", "localhost:27017", "must start with one of mongodb"),
    ("VIDEOCHAT_ICE_ADDRESSES", "127.0.0.1,nope", "'nope'"),
    ("VIDEOCHAT_ICE_SERVERS", "[{\"urls\": \"http://x\"}]", "stun:, turn: or turns:"),
    ("VIDEOCHAT_ICE_SERVERS", "not json", "JSON list"),
    ("VIDEOCHAT_MAX_PARTICIPANTS", "1", "between 2 and 16"),
    ("VIDEOCHAT_DEV_MODE", "maybe", "true/false"),
    ("VIDEOCHAT_ICE_TRANSPORT_POLICY", "udp", "'all' or 'relay'"),
    ("VIDEOCHAT_CAPTURE", "640x480", "WIDTHxHEIGHT@FPS"),
    ("VIDEOCHAT_CAPTURE", "9000x480@20", "64-3840"),
])
def test_bad_values_name_the_setting_and_value(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.load({name: value}, secrets_file=None)
    assert name in str(err.value)
    assert message in str(err.value)


def test_admin_token_required_outside_dev_mode() -> None:
    s = Settings.load({"VIDEOCHAT_DEV_MODE": "false", "VIDEOCHAT_ADMIN_TOKEN": "t0k"},
                      secrets_file=None)
    assert not s.check_admin(None)
    assert not s.check_admin("wrong")
    assert s.check_admin("t0k")


def test_bad_secrets_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "secrets.toml"
    bad.write_text("REDIS_URL = ")
    with pytest.raises(SettingsError, match="not valid TOML"):
        Settings.load({}, secrets_file=bad)


def test_capture_setting() -> None:
    assert Settings.load({}, secrets_file=None).capture == (640, 480, 20)
    assert Settings.load({"VIDEOCHAT_CAPTURE": "320x240@15"}, secrets_file=None).capture == (
        320, 240, 15)


# --- optional sign-in: secrets.toml [auth] (Streamlit's st.login) ---------------------------------

_AUTH_SHARED = (
    '[auth]\nredirect_uri = "https://chat.example.org/oauth2callback"\n'
    'cookie_secret = "0123456789abcdef0123456789abcdef"\n'
)
_DEFAULT_PROVIDER = (
    'client_id = "vc-client"\nclient_secret = "s3cr3t-value"\n'
    'server_metadata_url = "https://idp.example.org/.well-known/openid-configuration"\n'
)


def _named(name: str, metadata_url: str = "https://idp.example.org/.well-known/x") -> str:
    return (f'[auth.{name}]\nclient_id = "id-{name}"\nclient_secret = "secret-{name}"\n'
            f'server_metadata_url = "{metadata_url}"\n')


def _load_secrets(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(text)
    return Settings.load(env or {}, secrets_file=secrets)


def test_sign_in_is_off_without_an_auth_section(tmp_path: Path) -> None:
    assert Settings.load({}, secrets_file=None).require_login is False
    s = _load_secrets(tmp_path, 'VIDEOCHAT_DB = "x"\n')
    assert s.require_login is False and s.login_providers == ()


def test_auth_section_with_its_own_provider_turns_sign_in_on(tmp_path: Path) -> None:
    s = _load_secrets(tmp_path, _AUTH_SHARED + _DEFAULT_PROVIDER)
    assert s.require_login is True
    assert s.login_providers == ("default",)


def test_named_providers_in_file_order_and_env_picks_some(tmp_path: Path) -> None:
    text = _AUTH_SHARED + _named("google") + _named("okta")
    assert _load_secrets(tmp_path, text).login_providers == ("google", "okta")
    s = _load_secrets(tmp_path, text, {"VIDEOCHAT_LOGIN_PROVIDERS": "okta, google"})
    assert s.login_providers == ("okta", "google")


def test_client_kwargs_table_is_not_a_provider(tmp_path: Path) -> None:
    s = _load_secrets(tmp_path, _AUTH_SHARED + _DEFAULT_PROVIDER
                      + '[auth.client_kwargs]\nprompt = "login"\n')
    assert s.login_providers == ("default",)


def test_env_can_turn_configured_sign_in_off(tmp_path: Path) -> None:
    s = _load_secrets(tmp_path, _AUTH_SHARED + _DEFAULT_PROVIDER,
                      {"VIDEOCHAT_REQUIRE_LOGIN": "false"})
    assert s.require_login is False


def test_require_login_without_auth_section_names_the_variable() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.load({"VIDEOCHAT_REQUIRE_LOGIN": "yes"}, secrets_file=None)
    assert "VIDEOCHAT_REQUIRE_LOGIN='yes'" in str(err.value)
    assert "[auth]" in str(err.value)
    with pytest.raises(SettingsError, match="VIDEOCHAT_REQUIRE_LOGIN"):
        Settings(require_login=True)


@pytest.mark.parametrize(("text", "env", "name", "shown", "message"), [
    (_AUTH_SHARED, {}, "[auth]", "'<no provider>'", "client_id, client_secret"),
    (_AUTH_SHARED.replace("/oauth2callback", "/callback") + _DEFAULT_PROVIDER, {},
     "[auth] redirect_uri", "'https://chat.example.org/callback'", "/oauth2callback"),
    (_AUTH_SHARED.replace("https://chat.example.org", "chat.example.org") + _DEFAULT_PROVIDER,
     {}, "[auth] redirect_uri", "'chat.example.org/oauth2callback'", "absolute http(s) URL"),
    (_AUTH_SHARED.replace("0123456789abcdef0123456789abcdef", "short") + _DEFAULT_PROVIDER,
     {}, "[auth] cookie_secret", "'<5 characters>'", "at least 16 characters"),
    (_AUTH_SHARED + _named("my_idp"), {}, "[auth.my_idp]", "'my_idp'", "cannot use '_'"),
    (_AUTH_SHARED + _named("okta", "okta.example.org/x"), {},
     "[auth.okta] server_metadata_url", "'okta.example.org/x'", "absolute http(s) URL"),
    (_AUTH_SHARED + _named("okta").replace('client_id = "id-okta"\n', ""), {},
     "[auth.okta] client_id", "None", "required"),
    (_AUTH_SHARED + _named("google"), {"VIDEOCHAT_LOGIN_PROVIDERS": "okta"},
     "VIDEOCHAT_LOGIN_PROVIDERS", "'okta'", "configured: google"),
    (_AUTH_SHARED + _named("google"), {"VIDEOCHAT_LOGIN_PROVIDERS": "bad name"},
     "VIDEOCHAT_LOGIN_PROVIDERS", "'bad name'", "letters, digits"),
    (_AUTH_SHARED + _named("google"), {"VIDEOCHAT_REQUIRE_LOGIN": "sometimes"},
     "VIDEOCHAT_REQUIRE_LOGIN", "'sometimes'", "true/false"),
])
def test_bad_auth_values_name_the_key_and_value(
    tmp_path: Path, text: str, env: dict[str, str], name: str, shown: str, message: str
) -> None:
    with pytest.raises(SettingsError) as err:
        _load_secrets(tmp_path, text, env)
    assert f"setting {name}={shown} is invalid" in str(err.value)
    assert message in str(err.value)


def test_auth_errors_never_echo_secrets(tmp_path: Path) -> None:
    text = _AUTH_SHARED.replace("0123456789abcdef0123456789abcdef", "tooshort") + _DEFAULT_PROVIDER
    with pytest.raises(SettingsError) as err:
        _load_secrets(tmp_path, text)
    assert "tooshort" not in str(err.value)
    text = _AUTH_SHARED + _named("okta").replace('"secret-okta"', "12345")
    with pytest.raises(SettingsError) as err:
        _load_secrets(tmp_path, text)
    assert "[auth.okta] client_secret='<hidden>'" in str(err.value)
    assert "12345" not in str(err.value)
