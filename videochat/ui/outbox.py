"""`POST /_vc/chat`: messages a person typed while the server was away, delivered once.

While the app restarts, the page's restart watch (`restart_watch.js`) keeps what is typed in
the tab's own storage, each message with a client id (32 hex digits). Once the tab is back in
its seat the companion posts them here: `{pid, token, room, messages: [{id, text}]}` with the
participant's page token (the one the fast offer path uses). Each id is claimed in Redis
(`SET NX`, a day) before the message is queued, so a repeated post (a lost answer, a reload)
never sends a message twice; a message not sent (rate limit) gives its claim back and is
listed under `retry`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from videochat.backends import keys
from videochat.exceptions import RateLimited, ValidationError

logger = logging.getLogger(__name__)

MAX_ITEMS = 20
CLAIM_TTL_S = 86_400
_CLIENT_ID = re.compile(r"^[0-9a-f]{32}$")


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host", "")


def parse(body: Any) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(pid prefix, token, room, [(id, text)]) from a request body; ValueError naming what is
    wrong."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object {pid, token, room, messages}")
    pid, token, room = body.get("pid"), body.get("token"), body.get("room")
    items = body.get("messages")
    if not all(isinstance(v, str) and v for v in (pid, token, room)):
        raise ValueError("pid, token and room must be non-empty strings")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise ValueError(f"messages must be a list of 1-{MAX_ITEMS} items")
    out = []
    for item in items:
        mid = item.get("id") if isinstance(item, dict) else None
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(mid, str) or not _CLIENT_ID.match(mid):
            raise ValueError(f"message id {mid!r} must be 32 lowercase hex digits")
        if not isinstance(text, str):
            raise ValueError(f"message {mid} has no text")
        out.append((mid, text))
    return str(pid), str(token), str(room), out


def deliver(rt: Any, pid_prefix: str, room: str,
            items: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Queue each message not delivered before; {delivered, duplicate, retry, refused} ids."""
    me = next((p for p in rt.registry.participants()
               if p.id.startswith(pid_prefix) and p.room == room), None)
    result: dict[str, list[str]] = {"delivered": [], "duplicate": [], "retry": [],
                                    "refused": []}
    if me is None:
        result["retry"] = [mid for mid, _ in items]  # not seated (yet): the page tries again
        return result
    client: redis.Redis = rt.services.redis
    for mid, text in items:
        if not client.set(keys.chat_outbox_key(mid), me.id, nx=True, ex=CLAIM_TTL_S):
            result["duplicate"].append(mid)
            continue
        try:
            rt.chat.queue.send(room, me.id, me.name, text, message_id=mid)
        except RateLimited:
            client.delete(keys.chat_outbox_key(mid))
            result["retry"].append(mid)
            continue
        except ValidationError as exc:
            logger.info("outbox message %s refused: %s", mid, exc)
            result["refused"].append(mid)  # never deliverable: the page drops it
            continue
        except Exception:
            client.delete(keys.chat_outbox_key(mid))
            raise
        result["delivered"].append(mid)
    return result


async def chat_endpoint(request: Request) -> Response:
    from videochat.ui import server, webrtc

    if not _same_origin(request):
        return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
    try:
        pid, token, room, items = parse(await request.json())
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    if not webrtc.token_matches(pid, token):
        return JSONResponse({"error": "unknown participant or bad token"}, status_code=403)
    rt = server.runtime()
    if rt is None:
        return JSONResponse({"error": "starting up, retry"}, status_code=503)
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(None, deliver, rt, pid, room, items)
    except redis.RedisError as exc:
        return JSONResponse({"error": f"chat server unreachable: {exc}"}, status_code=503)
    return JSONResponse(result)
