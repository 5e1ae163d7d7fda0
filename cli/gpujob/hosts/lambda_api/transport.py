"""One API call with retries: the key in the Authorization header and nowhere else, 429, 5xx and
network errors retried with backoff (Retry-After wins), launches spaced, a launch re-sent only when
it surely did nothing, and every failure turned into a LambdaError chosen by the API's code."""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from gpujob.errors import UserError
from gpujob.hosts.lambda_api.errors import _CODE_WORDS, _USER_CODES, LambdaError, LambdaUserError
from gpujob.hosts.lambda_api.key import API_KEY_ENV, API_KEYS_PAGE, _Secret

DEFAULT_BASE_URL = "https://cloud.lambda.ai/api/v1"
BASE_URL_ENV = "GPUJOB_LAMBDA_API_URL"

# Retries: 429, 5xx, connection errors and timeouts, with exponential backoff (Retry-After wins).
INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
MAX_ATTEMPTS = 6                         # attempts in all, the first included: waits 1+2+4+8+16 s
UNRESOLVED_ATTEMPTS = 2                   # a host name that does not resolve: offline or no DNS, tried twice
RETRY_AFTER_CAP_S = 60.0                 # a Retry-After longer than this is cut to it
LAUNCH_INTERVAL_S = 12.0                 # documented: one launch request per 12 s
LAUNCH_SPACING_S = LAUNCH_INTERVAL_S + 0.5   # what the client keeps between its launches (jitter margin)

log = logging.getLogger("gpujob.hosts.lambda_api")

_launch_slots: dict[tuple, list] = {}    # (base_url, key fingerprint, clock) -> [lock, last launch]
_launch_slots_lock = threading.Lock()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would re-send the Authorization header wherever it points; answer it as an error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NetworkError(Exception):
    def __init__(self, reason: str, *, sent: bool, unresolved: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent        # False: the request surely never reached the server
        self.unresolved = unresolved  # the host name did not resolve: offline, or no DNS


class Transport:
    """Requests to one Lambda Cloud account's API at ``base_url`` (else ``$GPUJOB_LAMBDA_API_URL``,
    else the default). ``sleep`` and ``clock`` are injectable so tests (and the agent) can wait
    without really waiting."""

    def __init__(self, api_key: str, base_url: str | None = None, *, timeout_s: float = 30,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 max_attempts: int = MAX_ATTEMPTS, launch_interval_s: float = LAUNCH_SPACING_S) -> None:
        key = (api_key or "").strip()
        if not key:
            raise UserError("no Lambda Cloud API key given",
                            hint=f"`export {API_KEY_ENV}=...` (create one at {API_KEYS_PAGE})")
        if any(c.isspace() or ord(c) < 32 for c in key):
            raise UserError("the Lambda Cloud API key contains spaces or line breaks",
                            hint="copy the key again from the Lambda Cloud dashboard (API keys)")
        self._key = _Secret(key)
        url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"{url!r} is not an http(s) URL for the Lambda Cloud API",
                            hint=f"set {BASE_URL_ENV} to a URL like {DEFAULT_BASE_URL}, or unset it")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise UserError(f"refusing to send the Lambda Cloud API key over plain http to {parts.hostname}",
                            hint=f"use https (the API is at {DEFAULT_BASE_URL}); set {BASE_URL_ENV} accordingly")
        if parts.username or parts.password:
            raise UserError("the Lambda Cloud API URL must not carry a user or password",
                            hint=f"set {BASE_URL_ENV} to a URL like {DEFAULT_BASE_URL}")
        self.base_url = url
        self.timeout_s = timeout_s
        self.max_attempts = max(1, int(max_attempts))
        self.launch_interval_s = launch_interval_s
        self._sleep = sleep
        self._clock = clock
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if _is_loopback(parts.hostname):
            handlers.append(urllib.request.ProxyHandler({}))     # an emulator on this machine
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
        self._opener = urllib.request.build_opener(*handlers)
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        slot_key = (self.base_url, fingerprint, clock)
        with _launch_slots_lock:
            self._launch_slot = _launch_slots.setdefault(slot_key, [threading.Lock(), None])

    def _await_launch_slot(self) -> None:
        """Keeps our launches LAUNCH_SPACING_S apart (documented limit: one per 12 s), across every
        client of this process that shares the account, URL and clock."""
        lock, _ = self._launch_slot
        with lock:
            last = self._launch_slot[1]
            if last is not None:
                wait = last + self.launch_interval_s - self._clock()
                if wait > 0:
                    log.info("waiting %.1fs: Lambda Cloud allows one launch every %gs", wait, LAUNCH_INTERVAL_S)
                    self._sleep(wait)
            self._launch_slot[1] = self._clock()

    def request(self, method: str, path: str, body: Any = None, *, what: str, launch: bool = False,
                 reconcile: Callable[[], Any] | None = None) -> Any:
        """The ``data`` of one API call, with retries. A launch is only re-sent when its first try
        surely did nothing (429, connection refused) or ``reconcile`` found no instance it made."""
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        delay = INITIAL_BACKOFF_S
        started = self._clock()
        last: LambdaError | None = None
        attempt = 0
        unresolved = False
        while attempt < self.max_attempts:
            attempt += 1
            if launch:
                self._await_launch_slot()
            retry_after: float | None = None
            try:
                status, headers, raw = self._send(method, url, data)
            except _NetworkError as e:
                last = LambdaError("client/unreachable", self._scrub(
                    f"could not reach the Lambda Cloud API at {self.base_url} ({what}): {e.reason}"),
                    hint=f"check your network connection, or {BASE_URL_ENV} if you set it "
                         f"(the API is at {DEFAULT_BASE_URL})")
                ambiguous, unresolved = e.sent, e.unresolved
            else:
                if 200 <= status < 300:
                    return self._parse_ok(method, path, status, raw)
                err = self._error_from(method, path, status, headers, raw, what)
                if status != 429 and status < 500:
                    raise err
                last = err
                ambiguous = status != 429
                retry_after = _retry_after(headers.get("Retry-After"))
            if launch and ambiguous:
                if reconcile is None:
                    raise LambdaError(last.code, f"{last.message}; the launch may or may not have started "
                                      "an instance", hint="check your instances in the Lambda Cloud dashboard "
                                      "before launching again", status=last.status,
                                      suggestion=last.suggestion) from None
                try:
                    found = reconcile()
                except LambdaError as e:
                    raise LambdaError(last.code, f"{last.message}; the launch may or may not have started an "
                                      f"instance, and listing instances failed too: {e.message}",
                                      hint="check your instances in the Lambda Cloud dashboard",
                                      status=last.status) from None
                if found is not None:
                    return found
            if attempt >= self.max_attempts or (unresolved and attempt >= UNRESOLVED_ATTEMPTS):
                break  # a name that does not resolve twice, a second apart, is offline: say so now
            wait = min(retry_after, RETRY_AFTER_CAP_S) if retry_after is not None else delay
            if not unresolved:  # a name that did not resolve is tried once more, quietly: one line in all
                log.warning("Lambda API %s %s: %s; retrying in %.1fs (attempt %d of %d)", method, path,
                            last.message, wait, attempt + 1, self.max_attempts)
            self._sleep(wait)
            delay = min(delay * 2, MAX_BACKOFF_S)
        assert last is not None
        elapsed = self._clock() - started
        if last.status == 429:
            words = f"Lambda Cloud kept answering {what} with 429 Too Many Requests"
            hint = (f"the API allows about one request a second and one launch every {LAUNCH_INTERVAL_S:g} s; "
                    "another program may be using the same key. Wait a minute and try again")
        else:
            words = last.message.rstrip(".")
            hint = last.hint or "Lambda Cloud may be having trouble; try again later"
        raise type(last)(last.code, self._scrub(
            f"{words} (tried {attempt} time{'s' if attempt != 1 else ''} over {elapsed:.0f}s)"),
            hint=hint, suggestion=last.suggestion, status=last.status, api_message=last.api_message)

    def _send(self, method: str, url: str, data: bytes | None) -> tuple[int, Any, bytes]:
        headers = {"Authorization": f"Bearer {self._key.reveal()}", "Accept": "application/json",
                   "User-Agent": "gpujob-lambda-api/1"}   # urllib's default UA is refused by some CDNs
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            try:
                raw = e.read()
            except Exception:
                raw = b""
            return e.code, e.headers, raw
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise LambdaError("client/tls", f"the TLS certificate of {urllib.parse.urlsplit(url).hostname} "
                                  f"did not verify: {reason.verify_message}",
                                  hint="check the system clock and CA certificates, or a proxy that "
                                       "intercepts TLS") from None
            sent = not isinstance(reason, (ConnectionRefusedError, socket.gaierror))
            raise _NetworkError(_describe(reason), sent=sent, unresolved=isinstance(reason, socket.gaierror)) from None
        except (TimeoutError, OSError, ValueError) as e:      # timeouts, resets, truncated answers
            raise _NetworkError(_describe(e), sent=True) from None
        except Exception as e:  # http.client.HTTPException and friends
            raise _NetworkError(_describe(e), sent=True) from None

    def _parse_ok(self, method: str, path: str, status: int, raw: bytes) -> Any:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = None
        if not isinstance(doc, dict) or "data" not in doc:
            raise LambdaError("client/bad-response", self._scrub(
                f"the server at {self.base_url} answered {method} {path} (HTTP {status}) with something other "
                f"than the Lambda Cloud API's JSON: {_snippet(raw)}"),
                hint=f"check {BASE_URL_ENV} (now {self.base_url}); the Lambda Cloud API is at {DEFAULT_BASE_URL}",
                status=status)
        return doc["data"]

    def _error_from(self, method: str, path: str, status: int, headers: Any, raw: bytes,
                    what: str) -> LambdaError:
        try:
            doc = json.loads(raw.decode("utf-8"))
            error = doc.get("error") if isinstance(doc, dict) else None
        except (UnicodeDecodeError, ValueError):
            error = None
        if 300 <= status < 400:
            where = headers.get("Location") if headers is not None else None
            return LambdaUserError("client/redirect", self._scrub(
                f"the Lambda Cloud API at {self.base_url} redirected {method} {path} to {where or '?'}"),
                hint=f"set {BASE_URL_ENV} to the new address (the API is at {DEFAULT_BASE_URL})", status=status)
        if not isinstance(error, dict) or not error.get("code"):
            if status == 401:
                code = "global/invalid-api-key"
            else:
                code = f"http/{status}"
            words, hint = _CODE_WORDS.get(code, (None, None))
            message = (f"{words} ({what}; HTTP {status}, no error details)" if words else
                       f"Lambda Cloud API answered HTTP {status} to {method} {path} ({what}): {_snippet(raw)}")
            if status == 404 and not words:
                hint = f"check {BASE_URL_ENV} (now {self.base_url}); the Lambda Cloud API is at {DEFAULT_BASE_URL}"
            cls = LambdaUserError if (code in _USER_CODES or status in (401, 403, 404)) else LambdaError
            return cls(code, self._scrub(message), hint=hint, status=status)
        code = str(error.get("code"))
        api_message = str(error.get("message") or "").strip()
        suggestion = error.get("suggestion") or None
        words, hint = _CODE_WORDS.get(code, (None, None))
        if words is None:
            words = (f"Lambda Cloud's upstream provider failed ({code})" if code.startswith("provider/")
                     else f"Lambda Cloud API error {code}")
        message = f"{words} ({what})"
        if api_message:
            message += f": {api_message}"
        hint = hint or suggestion
        cls = LambdaUserError if code in _USER_CODES else LambdaError
        return cls(code, self._scrub(message), hint=self._scrub(hint) if hint else None,
                   suggestion=self._scrub(str(suggestion)) if suggestion else None, status=status,
                   api_message=self._scrub(api_message))

    def _scrub(self, text: str) -> str:
        """Whatever a server echoed back, the key does not leave through our messages."""
        key = self._key.reveal()
        return text.replace(key, "***") if key and key in text else text


def path_segment(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return "(empty body)"
    text = " ".join(text.split())
    return repr(text[:200] + ("..." if len(text) > 200 else ""))


def _describe(e: BaseException | str) -> str:
    if isinstance(e, str):
        return e
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror or e})"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or odd."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
