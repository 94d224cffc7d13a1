"""The service's safety rails, apart from the routes: the body-size cap (413), the token,
the security headers and one-line error answers."""

from __future__ import annotations

import hmac
import ipaddress
import logging

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from moaspace.errors import MoaspaceError

logger = logging.getLogger(__name__)

#: the cookie the page keeps the token in (set by ``GET /?token=...``)
TOKEN_COOKIE = "moaspace_token"
#: the page loads nothing from elsewhere; inline SVG and data: images only
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class TooLarge(HTTPException):
    """The request body passed the cap (raised while it is read)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the upload is larger than the limit of {limit:,} bytes")


class BodyLimit:
    """ASGI middleware: a request whose declared or received body passes ``max_bytes`` is
    answered 413 (declared: before any byte is read; chunked: as soon as it passes)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                return await _plain(send, 400, "invalid Content-Length header")
            if too_big:
                return await _plain(send, 413, TooLarge(self.max_bytes).detail)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise TooLarge(self.max_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except TooLarge as exc:
            if not started:
                await _plain(send, 413, exc.detail)


async def _plain(send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status)
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()]
                + [(b"connection", b"close")]})
    await send({"type": "http.response.body", "body": response.body})


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Binding anywhere but loopback needs a token (of at least 8 characters)."""
    if token is not None and len(token) < 8:
        raise MoaspaceError("--token must be at least 8 characters")
    if token is None and not is_loopback(host):
        raise MoaspaceError(f"binding to {host} (not a loopback address) needs --token: "
                            "anyone who can reach it could use the service")


def supplied_token(request: Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, ``X-Moaspace-Token`` or the
    page's cookie."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-moaspace-token") or request.cookies.get(TOKEN_COOKIE)


def token_ok(expected: str | None, supplied: str | None) -> bool:
    if expected is None:
        return True
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


def one_line(text: object, limit: int = 600) -> str:
    """A message on one line, shortened (never a traceback)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def install_error_handlers(app) -> None:
    """Every error answers ``{"detail": one line}``; an unexpected one is a 500 whose
    traceback goes to the server log only."""

    @app.exception_handler(MoaspaceError)
    async def _input(request, exc):
        return JSONResponse({"detail": one_line(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                 for e in exc.errors()]
        return JSONResponse({"detail": one_line("; ".join(parts) or "invalid request")},
                            status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the "
                                       "server log"}, status_code=500)


def security_headers(response) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Content-Security-Policy", CSP)
