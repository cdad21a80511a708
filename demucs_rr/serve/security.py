"""The request guard of ``demucs-rr serve``: Host allow-list, same-origin writes, the token, and
the headers that keep other sites from framing or reading the server.

- ``Host`` must be one of the served names when the server listens on loopback without a token
  (against DNS rebinding).
- A request that changes something (any method but GET, HEAD and OPTIONS) must come from the
  page itself: an ``Origin`` of another site, or ``null`` (a sandboxed iframe, a ``data:`` page,
  a redirect), or a browser's ``Sec-Fetch-Site`` other than ``same-origin``/``none`` is refused
  with 403. Programs that send neither header (curl, scripts) are not browsers and pass.
- ``/api/``, ``/docs`` and ``/openapi.json`` need the token when the server has one
  (``Authorization: Bearer TOKEN``, or the cookie the page gets from ``/?token=TOKEN``).
- Every response forbids framing (``X-Frame-Options: DENY``, CSP ``frame-ancestors 'none'``),
  MIME sniffing and referrers (the page's address may hold the token); the page may load
  scripts, styles, images and media from the server only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from demucs_rr.serve.config import ServeConfig

__all__ = ["COOKIE", "MIN_TOKEN_LENGTH", "SECURITY_HEADERS", "guard", "same_token"]

COOKIE = "demucs_rr_token"
MIN_TOKEN_LENGTH = 16
"""Shortest token a server reachable from the network accepts."""
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PROTECTED = ("/api/", "/docs", "/openapi.json")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def same_token(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the server's."""
    return hmac.compare_digest((given or "").encode(), token.encode())


def _authorized(request: Request, token: str | None) -> bool:
    """Whether the request carries the server's token (always, when there is none)."""
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
    return same_token(given, token)


def _foreign(request: Request) -> str | None:
    """Why a state-changing request does not come from the page itself, or None."""
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin is not None:
        if origin == "null":
            return "requests from an opaque origin (null) are refused"
        scheme, _, where = origin.partition("://")
        if scheme not in ("http", "https") or where != host:
            return "cross-origin requests are refused"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return "cross-site requests are refused"
    return None


def _refusal(request: Request, config: ServeConfig) -> Response | None:
    host = request.headers.get("host", "")
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if config.allowed_hosts is not None and hostname not in config.allowed_hosts:
        return JSONResponse({"detail": f"host {host[:100]!r} is not served here"}, 400)
    if request.method not in SAFE_METHODS:
        why = _foreign(request)
        if why is not None:
            return JSONResponse({"detail": why}, 403)
    if request.url.path.startswith(PROTECTED) and not _authorized(request, config.token):
        detail = "missing or wrong token: send 'Authorization: Bearer TOKEN'"
        return JSONResponse({"detail": detail}, 401)
    return None


def guard(config: ServeConfig) -> Callable[[Request, Any], Awaitable[Response]]:
    """HTTP middleware applying :mod:`demucs_rr.serve.security` to every request."""

    async def check(request: Request, call_next: Any) -> Response:
        response = _refusal(request, config)
        if response is None:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return check
