"""What every request passes before a route: the body limit, the bearer token, and the wording
of a body that does not validate (a 413, a 401, a 422 naming the fields)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from timedistill.conf import ServeConfig

TOKEN_ENV = "TIMEDISTILL_SERVE_TOKEN"


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, whether it says its length
    up front or streams it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = orjson.dumps({"detail": f"request body is larger than the limit of {self.limit} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def bearer_token(settings: ServeConfig) -> Callable[..., None]:
    """The route dependency that asks for `serve.auth_token` (or $TIMEDISTILL_SERVE_TOKEN) as a
    bearer token, when one is set; a missing or wrong one is a 401."""
    token = settings.auth_token or os.environ.get(TOKEN_ENV) or None
    bearer = HTTPBearer(auto_error=False, description="serve.auth_token (or $TIMEDISTILL_SERVE_TOKEN), when set")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return authorize


async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that does not validate, as a 422 naming what is wrong (five problems at most)."""
    problems = []
    for error in exc.errors()[:5]:
        if error["type"] == "json_invalid":
            problems.append(f"malformed JSON body ({error['msg'].removeprefix('Invalid JSON: ')})")
            continue
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        problems.append(f"{where}: {error['msg']}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)
