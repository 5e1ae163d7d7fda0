"""The checks in front of every route (an ASGI middleware):

1. **Host header** on a loopback bind: only ``localhost``, ``127.0.0.1`` or ``[::1]`` (a web page cannot
   reach the dashboard by DNS rebinding); else 400.
2. **Token** (:mod:`gpujob.ui.security`, non-loopback binds): ``Authorization: Bearer <token>``, or the
   ``gpujob_token`` cookie, which ``?token=<token>`` sets (HttpOnly, SameSite=Strict) before redirecting
   to the same page without it (so the token does not stay in the address bar or the history); else 401.
3. **CSRF** on every POST: the form field ``csrf`` or the header ``X-CSRF-Token`` must equal the
   ``gpujob_csrf`` cookie that every response sets (a random value per browser); else 403. Cookies are
   not kept apart by port, so a page on another loopback port could plant that cookie and send a
   matching field: a POST must also come from the dashboard's own origin, by the browser's word:
   ``Sec-Fetch-Site`` when sent must be ``same-origin`` (or ``none``: typed by the user); without it,
   ``Origin`` when sent must be this dashboard's scheme, host and port; else 403. (A client that sends neither,
   curl, still needs the cookie and the field; the routes also need the job's full id on POST.)

Every response carries a Content-Security-Policy that allows scripts from the dashboard only (no
inline script), and no referrer.
"""

from __future__ import annotations

import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlencode

from starlette.datastructures import URL
from starlette.responses import PlainTextResponse, RedirectResponse

from gpujob.ui.security import Access, is_loopback

TOKEN_COOKIE = "gpujob_token"
CSRF_COOKIE = "gpujob_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 64 * 1024
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                                 b"form-action 'self'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]
UNAUTHORIZED = ("gpujob ui: this dashboard needs its token. Open the URL `gpujob ui` printed when it made the token "
                "(…/?token=…), or send Authorization: Bearer <token>; the token is in $GPUJOB_HOME/ui-token.\n")


def _cookies(scope) -> dict[str, str]:
    jar = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001 -- a malformed cookie header is as good as none
                pass
    return {k: m.value for k, m in jar.items()}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and secrets.compare_digest(a.encode(), b.encode())


class Guard:
    def __init__(self, app, access: Access) -> None:
        self.app = app
        self.access = access
        self.loopback = is_loopback(access.host)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.loopback and not self._host_ok(scope):
            return await PlainTextResponse("gpujob ui: unexpected Host header; open it as http://127.0.0.1:PORT/\n",
                                           status_code=400)(scope, receive, send)
        cookies = _cookies(scope)
        extra_cookies: list[str] = []
        secure = "; Secure" if self.access.certfile else ""
        if self.access.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [None])[0]
            if _same(given, self.access.token):  # the printed URL: set the cookie, drop the token from the URL
                rest = {k: v for k, v in query.items() if k != "token"}
                target = URL(scope=scope).replace(query=urlencode(rest, doseq=True))
                response = RedirectResponse(target.path + (f"?{target.query}" if target.query else ""), status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.access.token, httponly=True, samesite="strict",
                                    secure=bool(self.access.certfile), path="/")
                return await response(scope, receive, send)
            bearer = _header(scope, b"authorization") or ""
            bearer = bearer[7:].strip() if bearer.lower().startswith("bearer ") else None
            if not (_same(bearer, self.access.token) or _same(cookies.get(TOKEN_COOKIE), self.access.token)):
                return await PlainTextResponse(UNAUTHORIZED, status_code=401,
                                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        csrf = cookies.get(CSRF_COOKIE)
        if not csrf or len(csrf) < 16:
            csrf = secrets.token_urlsafe(24)
            extra_cookies.append(f"{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; SameSite=Strict{secure}")
        scope.setdefault("state", {})["csrf"] = csrf
        if scope["method"] == "POST":
            foreign = self._foreign(scope)
            if foreign:
                return await PlainTextResponse(
                    f"gpujob ui: this request came from another site or origin ({foreign}); the dashboard "
                    "takes actions only from its own pages\n", status_code=403)(scope, receive, send)
            receive, given = await self._csrf_given(scope, receive)
            if not _same(given, cookies.get(CSRF_COOKIE)):
                return await PlainTextResponse(
                    "gpujob ui: this form is stale or did not come from the dashboard (CSRF check failed); "
                    "reload the page and try again\n", status_code=403)(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + HEADERS
                headers += [(b"set-cookie", c.encode("latin-1")) for c in extra_cookies]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _foreign(self, scope) -> str | None:
        """Why a POST did not come from the dashboard's own pages, by the browser's headers; None when
        nothing says so. ``Sec-Fetch-Site`` (which no page can set) decides where a browser sends it:
        the dashboard's ``no-referrer`` policy makes its own forms' ``Origin`` "null". Without it (an
        older browser), ``Origin``, when sent, must be the dashboard's own."""
        site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
        if site:
            return None if site in ("same-origin", "none") else f"Sec-Fetch-Site: {site[:40]}"
        origin = _header(scope, b"origin")
        if origin is None:
            return None
        own = f"{'https' if self.access.certfile else 'http'}://{(_header(scope, b'host') or '').lower()}"
        if origin.strip().lower().rstrip("/") != own:
            return f"Origin: {origin[:80]!r}"
        return None

    def _host_ok(self, scope) -> bool:
        host = (_header(scope, b"host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]") in ("localhost", "127.0.0.1", "::1") or is_loopback(name.strip("[]"))

    async def _csrf_given(self, scope, receive):
        """The CSRF token a POST carries (header, else the urlencoded form's field), and a ``receive``
        that hands the body on to the route."""
        header = _header(scope, CSRF_HEADER.encode())
        if header:
            return receive, header
        body, more = b"", True
        while more and len(body) <= MAX_FORM_BYTES:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        fields = parse_qs(body.decode("utf-8", "replace"))
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay, (fields.get(CSRF_FIELD) or [None])[0]
