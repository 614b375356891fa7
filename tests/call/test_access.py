"""Room passcodes on the real embedded Valkey (and SecantusDB), the admin gate, backend URLs.

The TLS tests put a real TLS terminator (self-signed certificate made with the `openssl` command)
in front of the embedded Valkey and SecantusDB, which have no TLS of their own, so that
`rediss://` and `tls=true` are exercised end to end on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pymongo
import pymongo.errors
import pytest
import redis
from pymongo.uri_parser import parse_uri

from videochat.backends.embedded import SecantusProcess, ValkeyProcess, free_port
from videochat.backends.services import mongo_client, redis_client
from videochat.call.access import (
    BackendUrl,
    RoomAccess,
    describe_backend_url,
    failures_key,
    hash_passcode,
    meta_key,
    redact_url,
    require_admin,
    verify_passcode,
)
from videochat.exceptions import (
    AccessDenied,
    BackendUnavailable,
    InvalidRoomName,
    RateLimited,
    ValidationError,
)
from videochat.settings import Settings

# --- passcode hashing ---------------------------------------------------------------------------


def test_hash_is_salted_scrypt_that_an_independent_computation_reproduces() -> None:
    salt = bytes(range(16))
    record = hash_passcode("open sesame", salt=salt)
    scheme, n, r, p, salt_b64, digest_b64 = record.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    expected = hashlib.scrypt(b"open sesame", salt=salt, n=16384, r=8, p=1, dklen=32)
    assert base64.b64decode(digest_b64) == expected
    assert base64.b64decode(salt_b64) == salt
    assert "open sesame" not in record
    # A fresh salt each time: equal passcodes do not give equal records.
    assert hash_passcode("open sesame") != hash_passcode("open sesame")


def test_verify_accepts_only_the_passcode() -> None:
    record = hash_passcode("4711")
    assert verify_passcode("4711", record)
    assert not verify_passcode("4712", record)
    assert not verify_passcode("", record)
    assert not verify_passcode("4711", "scrypt$bogus")
    assert not verify_passcode("4711", record.replace("scrypt$16384", "scrypt$1073741824"))


def test_passcode_rules_never_echo_the_passcode() -> None:
    with pytest.raises(ValidationError) as err:
        hash_passcode("123")
    assert "123" not in str(err.value) and "4-128" in str(err.value)


# --- RoomAccess on Valkey -----------------------------------------------------------------------


def _room() -> str:
    return "r-" + uuid.uuid4().hex[:10]


def test_open_room_needs_nothing(redis_conn: redis.Redis) -> None:
    access = RoomAccess(redis_conn)
    room = _room()
    assert not access.requires_passcode(room)
    access.check(room, None)
    access.check(room, "anything")


def test_protected_room_refuses_clearly_and_admits_with_the_passcode(
    redis_conn: redis.Redis,
) -> None:
    access = RoomAccess(redis_conn)
    room = _room()
    access.set_passcode(room, "blue-42")
    assert access.requires_passcode(room)
    stored = redis_conn.hget(meta_key(room), "passcode")
    assert isinstance(stored, str) and stored.startswith("scrypt$") and "blue-42" not in stored

    with pytest.raises(AccessDenied, match=f"room '{room}' is protected: enter its passcode"):
        access.check(room, None)
    with pytest.raises(AccessDenied, match=f"wrong passcode for room '{room}'"):
        access.check(room, "blue-43")
    access.check(room, "blue-42")
    # Another process (a second app node) sees the same protection through Redis.
    assert RoomAccess(redis_client(_url_of(redis_conn))).requires_passcode(room)

    access.clear_passcode(room)
    access.check(room, None)


def test_wrong_passcodes_are_rate_limited_per_room(redis_conn: redis.Redis) -> None:
    access = RoomAccess(redis_conn, max_failures=3, window_s=1)
    room, other = _room(), _room()
    access.set_passcode(room, "right-one")
    access.set_passcode(other, "right-one")
    for _ in range(3):
        with pytest.raises(AccessDenied):
            access.check(room, "wrong")
    with pytest.raises(RateLimited, match="at most 3 per 1 s"):
        access.check(room, "right-one")  # even the right passcode waits out the window
    access.check(other, "right-one")  # other rooms are not affected
    assert redis_conn.ttl(failures_key(room)) in (0, 1)
    deadline = time.monotonic() + 3
    while redis_conn.exists(failures_key(room)) and time.monotonic() < deadline:
        time.sleep(0.1)
    access.check(room, "right-one")


def test_bad_room_names_are_rejected(redis_conn: redis.Redis) -> None:
    with pytest.raises(InvalidRoomName):
        RoomAccess(redis_conn).check("no spaces allowed", None)


def test_mongo_copy_survives_a_redis_that_lost_its_data(
    redis_conn: redis.Redis, mongo_db: pymongo.database.Database  # type: ignore[type-arg]
) -> None:
    rooms = mongo_db["rooms"]
    access = RoomAccess(redis_conn, rooms)
    room = _room()
    access.set_passcode(room, "kept-safe")
    doc = rooms.find_one({"_id": room})
    assert doc is not None and doc["passcode"] == redis_conn.hget(meta_key(room), "passcode")

    redis_conn.delete(meta_key(room))  # a Valkey restarted without persistence
    with pytest.raises(AccessDenied):
        access.check(room, "guess")
    assert redis_conn.hget(meta_key(room), "passcode") is not None  # restored for next time
    access.check(room, "kept-safe")

    access.clear_passcode(room)
    doc = rooms.find_one({"_id": room})
    assert doc is not None and "passcode" not in doc
    access.check(room, None)


def test_unreachable_redis_fails_closed(
    redis_conn: redis.Redis, mongo_db: pymongo.database.Database  # type: ignore[type-arg]
) -> None:
    room = _room()
    RoomAccess(redis_conn, mongo_db["rooms"]).set_passcode(room, "still-locked")
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", retries=0, socket_timeout=0.5)
    with pytest.raises(BackendUnavailable, match="Redis unavailable"):
        RoomAccess(dead).check(room, None)
    # With the MongoDB copy the room stays protected, and still opens with its passcode.
    with_mongo = RoomAccess(dead, mongo_db["rooms"])
    with pytest.raises(AccessDenied):
        with_mongo.check(room, "nope")
    with_mongo.check(room, "still-locked")


def _url_of(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


# --- the admin gate -----------------------------------------------------------------------------


def test_require_admin_follows_settings() -> None:
    require_admin(Settings(dev_mode=True), None, "Faults")
    with pytest.raises(AccessDenied, match="Faults page is locked: .*VIDEOCHAT_ADMIN_TOKEN"):
        require_admin(Settings(dev_mode=False), "x", "Faults")
    prod = Settings(dev_mode=False, admin_token="t0ken")
    with pytest.raises(AccessDenied, match="QA page needs the admin token"):
        require_admin(prod, None, "QA")
    with pytest.raises(AccessDenied, match="wrong admin token"):
        require_admin(prod, "t0ken!", "QA")
    require_admin(prod, "t0ken", "QA")


# --- backend URLs: accepted as they are ---------------------------------------------------------


def test_tls_and_credential_urls_are_accepted_without_connecting() -> None:
    ca = "/etc/ssl/certs/ca-certificates.crt"
    redis_url = f"rediss://app:{quote('p@ss:w/rd', safe='')}@127.0.0.1:1/3" \
        f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    mongo_uri = f"mongodb://app:{quote('p@ss', safe='')}@127.0.0.1:1/?tls=true&tlsCAFile={ca}" \
        "&authSource=admin"
    settings = Settings.from_mapping({"REDIS_URL": redis_url, "MONGODB_URI": mongo_uri})
    assert settings.redis_url == redis_url and settings.mongodb_uri == mongo_uri

    client = redis_client(settings.redis_url)  # nothing connects until a command runs
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kw = pool.connection_kwargs
    assert (kw["username"], kw["password"], kw["db"]) == ("app", "p@ss:w/rd", 3)
    conn = pool.connection_class(**kw)
    assert conn.ca_certs == ca and conn.cert_reqs == ssl.CERT_REQUIRED
    client.close()

    parsed = parse_uri(settings.mongodb_uri)
    assert (parsed["username"], parsed["password"]) == ("app", "p@ss")
    assert parsed["options"]["tls"] is True and parsed["options"]["tlsCAFile"] == ca
    mongo_client(settings.mongodb_uri).close()  # accepted; connecting happens in the background


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", BackendUrl("redis", "redis", ("127.0.0.1:6379",), False,
                                                None, False, "redis://127.0.0.1:6379/0")),
        ("rediss://u:s3cret@h:6380/2", BackendUrl("redis", "rediss", ("h:6380",), True, "u", True,
                                                  "rediss://u:***@h:6380/2")),
        ("mongodb://u:s3cret@a,b:27018/?replicaSet=rs0&tls=true",
         BackendUrl("mongodb", "mongodb", ("a", "b:27018"), True, "u", True,
                    "mongodb://u:***@a,b:27018/?replicaSet=rs0&tls=true")),
        ("mongodb+srv://c.example.org/db", BackendUrl("mongodb", "mongodb+srv",
                                                      ("c.example.org",), True, None, False,
                                                      "mongodb+srv://c.example.org/db")),
        ("unix:///run/redis.sock?password=s3cret", BackendUrl(
            "redis", "unix", ("/run/redis.sock",), False, None, True,
            "unix:///run/redis.sock?password=***")),
    ],
)
def test_describe_backend_url_hides_the_password(url: str, expected: BackendUrl) -> None:
    described = describe_backend_url(url)
    assert described == expected
    assert "s3cret" not in repr(described) and "s3cret" not in redact_url(url)


# --- backend URLs: for real ---------------------------------------------------------------------


def test_redis_url_credentials_log_in_for_real(
    redis_conn: redis.Redis, valkey_server: ValkeyProcess
) -> None:
    user, password = "vc_" + uuid.uuid4().hex[:8], "p@ss:w/rd %"
    redis_conn.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                           channels=["*"], categories=["+@all"])
    try:
        base = f"127.0.0.1:{valkey_server.port}/0"
        good = redis_client(f"redis://{user}:{quote(password, safe='')}@{base}", retries=0)
        assert good.acl_whoami() == user
        good.set("vc:test:acl", "1")
        good.close()
        bad = redis_client(f"redis://{user}:wrong@{base}", retries=0)
        with pytest.raises(redis.AuthenticationError):
            bad.ping()
        bad.close()
    finally:
        redis_conn.acl_deluser(user)


class _TlsTerminator:
    """Accepts TLS on loopback and forwards plain bytes to a backend port (at most 16 conns)."""

    def __init__(self, cert: Path, key: Path, backend_port: int) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # close() must not wait on a blocked accept()
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        accepted = 0
        while accepted < 16 and not self._stop:
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted += 1
            raw.settimeout(None)
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes += 1
        backend = socket.create_connection(("127.0.0.1", self.backend_port))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(backend, tls), daemon=True)
        back.start()
        pump(tls, backend)
        back.join(5)
        tls.close()
        backend.close()

    def close(self) -> None:
        self._stop = True
        self._accepter.join(5)
        self.listener.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make a test certificate (apt-get install "
                    "-y openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_valkey(
    certificate: tuple[Path, Path], valkey_server: ValkeyProcess, redis_conn: redis.Redis
) -> Iterator[_TlsTerminator]:
    proxy = _TlsTerminator(*certificate, valkey_server.port)
    yield proxy
    proxy.close()


def test_rediss_url_talks_tls_for_real(
    tls_valkey: _TlsTerminator, certificate: tuple[Path, Path], redis_conn: redis.Redis
) -> None:
    cert, _ = certificate
    url = f"rediss://127.0.0.1:{tls_valkey.port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    client = redis_client(url, retries=0)
    client.set("vc:test:tls", "through-tls")
    assert redis_conn.get("vc:test:tls") == "through-tls"  # same server, plain port
    assert tls_valkey.handshakes >= 1
    client.close()
    # Without our CA the certificate is rejected: TLS is really verified, not merely wrapped.
    untrusted = redis_client(f"rediss://127.0.0.1:{tls_valkey.port}/0", retries=0)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.ping()
    untrusted.close()


def test_mongodb_tls_uri_talks_tls_for_real(
    certificate: tuple[Path, Path],
    secantus_server: SecantusProcess,
    mongo_db: pymongo.database.Database,  # type: ignore[type-arg]
) -> None:
    cert, key = certificate
    proxy = _TlsTerminator(cert, key, secantus_server.port)
    try:
        uri = f"mongodb://127.0.0.1:{proxy.port}/?tls=true&tlsCAFile={cert}&directConnection=true"
        client = mongo_client(uri)
        client[mongo_db.name]["probe"].insert_one({"_id": 1, "via": "tls"})
        assert mongo_db["probe"].find_one({"_id": 1}) == {"_id": 1, "via": "tls"}
        assert proxy.handshakes >= 1
        client.close()
        untrusted = mongo_client(
            f"mongodb://127.0.0.1:{proxy.port}/?tls=true&directConnection=true", timeout_ms=1500
        )
        with pytest.raises(pymongo.errors.ServerSelectionTimeoutError, match="CERTIFICATE_VERIFY"):
            untrusted.admin.command("ping")
        untrusted.close()
    finally:
        proxy.close()
