"""Redis and MongoDB clients built from Settings, with embedded servers when no URL is given."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pymongo
import pymongo.errors
import redis
from pymongo.database import Database
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from videochat.backends.embedded import EmbeddedServers
from videochat.settings import Settings

logger = logging.getLogger(__name__)

MongoDoc = dict[str, Any]


def redis_client(url: str, *, retries: int = 3, socket_timeout: float = 2.0) -> redis.Redis:
    """A client that retries with exponential backoff on connection errors and timeouts."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def mongo_client(uri: str, *, timeout_ms: int = 3000) -> pymongo.MongoClient[MongoDoc]:
    return pymongo.MongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 3, 10_000),
        retryWrites=True,
        retryReads=True,
        tz_aware=True,
    )


@dataclass
class BackendStatus:
    name: str
    source: str  # "embedded" or "url"
    up: bool
    detail: str = ""


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    mongo: pymongo.MongoClient[MongoDoc]
    redis_url: str
    mongo_uri: str
    embedded: EmbeddedServers | None = field(default=None, repr=False)

    @property
    def db(self) -> Database[MongoDoc]:
        return self.mongo[self.settings.db_name]

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        embedded = None
        redis_url, mongo_uri = settings.redis_url, settings.mongodb_uri
        if redis_url is None or mongo_uri is None:
            embedded = EmbeddedServers(settings.state_dir)
            found = embedded.ensure(redis=redis_url is None, mongo=mongo_uri is None)
            redis_url = redis_url or found["redis"].url
            mongo_uri = mongo_uri or found["mongo"].url
        return cls(
            settings=settings,
            redis=redis_client(redis_url),
            mongo=mongo_client(mongo_uri),
            redis_url=redis_url,
            mongo_uri=mongo_uri,
            embedded=embedded,
        )

    def status(self) -> list[BackendStatus]:
        """One cheap round trip to each backend, for the sidebar badge."""
        out = []
        try:
            redis_up = bool(self.redis.ping())
            detail = ""
        except redis.RedisError as exc:
            redis_up, detail = False, str(exc)
        out.append(BackendStatus("Redis", "embedded" if self.settings.embedded_redis else "url",
                                 redis_up, detail))
        try:
            self.mongo.admin.command("ping")
            mongo_up, detail = True, ""
        except pymongo.errors.PyMongoError as exc:
            mongo_up, detail = False, str(exc).split(",")[0]
        out.append(BackendStatus("MongoDB", "embedded" if self.settings.embedded_mongo else "url",
                                 mongo_up, detail))
        return out

    def close(self) -> None:
        self.redis.close()
        self.mongo.close()
