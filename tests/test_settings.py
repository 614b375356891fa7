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
