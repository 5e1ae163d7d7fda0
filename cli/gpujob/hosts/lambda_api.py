"""Lambda Cloud public API v1 client. **Stdlib only**: this file is copied onto the rented host and
imported there by the idle agent, which has no pip packages (and no gpujob either).

What it relies on, from the OpenAPI spec Lambda publishes (https://cloud.lambda.ai/api/v1/openapi.json,
v1.10.0, rendered at https://docs.lambda.ai/api/cloud):

- Base URL ``https://cloud.lambda.ai/api/v1`` (``cloud.lambdalabs.com`` is the deprecated secondary
  server). Override with ``base_url=`` or ``$GPUJOB_LAMBDA_API_URL``.
- Auth: ``Authorization: Bearer <key>`` (Basic with the key as user is also accepted; not used here).
- Success bodies are ``{"data": ...}``; errors ``{"error": {"code", "message", "suggestion"?}}``. The
  spec says to key on ``code``, never on the wording, so messages below are chosen by code.
- Rate limits: "Requests to the API are generally limited to one request per second. Requests to the
  /instance-operations/launch endpoint are limited to one request per 12 seconds, or five requests per
  minute." 429 is retried with backoff; launches are also spaced client-side.
- Launch body: ``region_name``, ``instance_type_name``, ``ssh_key_names`` (exactly one), optional
  ``file_system_names``, ``name``. ``quantity`` is no longer in the spec (more than 1 is refused).
- Instance statuses: booting, active, unhealthy, terminating, terminated, preempted. ``ip`` is absent
  until the instance has booted.

The API key never appears in a message, a hint, a repr or a log line, and never in a URL.
"""

from __future__ import annotations

import difflib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

try:
    from gpujob.errors import GpujobError, UserError
except ImportError:  # on the rented host, next to the agent, without gpujob installed

    class GpujobError(Exception):  # type: ignore[no-redef]
        exit_code = 1

        def __init__(self, message: str, hint: str | None = None) -> None:
            super().__init__(message)
            self.message = message
            self.hint = hint

    class UserError(GpujobError):  # type: ignore[no-redef]
        exit_code = 2


DEFAULT_BASE_URL = "https://cloud.lambda.ai/api/v1"
BASE_URL_ENV = "GPUJOB_LAMBDA_API_URL"
API_KEY_ENV = "LAMBDA_API_KEY"
API_KEY_FILE = "lambda-api-key"          # under $GPUJOB_HOME (default ~/.gpujob), mode 0600
API_KEYS_PAGE = "https://cloud.lambda.ai/api-keys"

# Retries: 429, 5xx, connection errors and timeouts, with exponential backoff (Retry-After wins).
INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
MAX_ATTEMPTS = 6                         # attempts in all, the first included: waits 1+2+4+8+16 s
RETRY_AFTER_CAP_S = 60.0                 # a Retry-After longer than this is cut to it
LAUNCH_INTERVAL_S = 12.0                 # documented: one launch request per 12 s
LAUNCH_SPACING_S = LAUNCH_INTERVAL_S + 0.5   # what the client keeps between its launches (jitter margin)

INSTANCE_STATUSES = ("booting", "active", "unhealthy", "terminating", "terminated", "preempted")
INSUFFICIENT_CAPACITY = "instance-operations/launch/insufficient-capacity"
NOT_FOUND = "global/object-does-not-exist"

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- errors

# code -> (what it means, in words; what to do, or None to use the API's suggestion)
_CODE_WORDS: dict[str, tuple[str, str | None]] = {
    "global/invalid-api-key": (
        "Lambda Cloud rejected the API key",
        f"create a new key in the Lambda Cloud dashboard under API keys ({API_KEYS_PAGE}), then "
        f"`export {API_KEY_ENV}=...` or put it in ~/.gpujob/{API_KEY_FILE} with `chmod 600`"),
    "global/account-inactive": (
        "your Lambda Cloud account is inactive",
        "verify your email address and add a payment method in the Lambda Cloud dashboard; "
        "contact Lambda support if it continues"),
    "global/invalid-address": (
        "Lambda Cloud says your billing address is invalid",
        "correct the billing address in the Lambda Cloud dashboard"),
    "global/forbidden": ("Lambda Cloud refused the request (forbidden)", None),
    "global/invalid-parameters": ("Lambda Cloud refused the request's parameters", None),
    NOT_FOUND: ("Lambda Cloud has no such object", None),
    "global/not-found": ("Lambda Cloud has no such object", None),
    "global/duplicate": ("that name is already taken on Lambda Cloud", "choose another name"),
    "global/conflict": ("the request conflicts with the object's current state", None),
    "global/quota-exceeded": (
        "your Lambda Cloud quota is used up",
        "terminate instances you no longer need, or ask Lambda support to raise the quota"),
    INSUFFICIENT_CAPACITY: ("Lambda Cloud has no capacity for this launch", None),
    "instance-operations/launch/file-system-in-wrong-region": (
        "the file system is in another region than the instance",
        "launch in the file system's region, or leave the file system out"),
    "filesystems/filesystem-in-use": (
        "the file system is mounted on an instance", "terminate the instances using it first"),
    "global/internal-error": ("Lambda Cloud had an internal error", "try again later"),
}
# Codes that mean "your input (key, names, ids, account) needs fixing": exit 2.
_USER_CODES = {
    "global/invalid-api-key", "global/account-inactive", "global/invalid-address", "global/forbidden",
    "global/invalid-parameters", NOT_FOUND, "global/not-found", "global/duplicate",
    "global/quota-exceeded", "instance-operations/launch/file-system-in-wrong-region",
    "filesystems/filesystem-in-use",
}


class LambdaError(GpujobError):
    """A Lambda Cloud API call failed. ``code`` is the API's error code (or a ``client/...`` code for
    failures that never got an API answer), ``message`` the words a user sees, ``hint`` what to do,
    ``suggestion`` the API's own suggestion, ``status`` the HTTP status (0 when there was none)."""

    def __init__(self, code: str, message: str, *, hint: str | None = None,
                 suggestion: str | None = None, status: int = 0, api_message: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.suggestion = suggestion
        self.status = status
        self.api_message = api_message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


class LambdaUserError(LambdaError, UserError):
    """A LambdaError the user fixes (the key, a name, an id, the account): exit 2."""

    exit_code = 2


class CapacityError(LambdaError):
    """No capacity for an instance type in the wanted region; ``regions_with_capacity`` lists where
    there is some (maybe none), ``alternatives`` other types that have capacity now."""

    def __init__(self, instance_type: str, region: str | None, regions_with_capacity: list[str], *,
                 alternatives: list[str] | None = None, status: int = 0,
                 suggestion: str | None = None) -> None:
        self.instance_type = instance_type
        self.region = region
        self.regions_with_capacity = list(regions_with_capacity)
        self.alternatives = list(alternatives or [])
        where = f" in {region}" if region else ""
        if self.regions_with_capacity:
            message = (f"{instance_type} has no capacity{where}; it has capacity in: "
                       f"{', '.join(self.regions_with_capacity)}")
            hint = "launch in one of those regions, or leave the region unset to take the first with capacity"
        else:
            message = (f"{instance_type} has no capacity{where}"
                       f"{', nor in any other region' if region else ' in any region'} right now")
            hint = "try again later"
            if self.alternatives:
                hint += f", or use a type that has capacity now: {', '.join(self.alternatives[:6])}"
        super().__init__(INSUFFICIENT_CAPACITY, message, hint=hint, suggestion=suggestion, status=status)


class _Secret:
    """Holds the API key; prints as *** wherever it ends up (reprs, tracebacks with locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


# ------------------------------------------------------------------------------------ data types


@dataclass(frozen=True)
class InstanceType:
    name: str
    description: str
    gpu_description: str
    price_cents_per_hour: int
    vcpus: int
    memory_gib: int
    storage_gib: int
    gpus: int
    regions_with_capacity: list[str] = field(default_factory=list)

    @property
    def price_per_hour(self) -> float:
        """US dollars per hour."""
        return self.price_cents_per_hour / 100

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> InstanceType:
        t = item.get("instance_type") or {}
        specs = t.get("specs") or {}
        return cls(
            name=t.get("name", ""), description=t.get("description", ""),
            gpu_description=t.get("gpu_description", ""),
            price_cents_per_hour=int(t.get("price_cents_per_hour") or 0),
            vcpus=int(specs.get("vcpus") or 0), memory_gib=int(specs.get("memory_gib") or 0),
            storage_gib=int(specs.get("storage_gib") or 0), gpus=int(specs.get("gpus") or 0),
            regions_with_capacity=[r.get("name", "") for r in item.get("regions_with_capacity_available") or []],
        )


@dataclass(frozen=True)
class Instance:
    id: str
    name: str | None
    status: str
    ip: str | None                    # None while booting
    region: str | None
    instance_type: str | None         # the type's name
    price_cents_per_hour: int | None
    ssh_key_names: list[str]
    file_system_names: list[str]
    hostname: str | None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def price_per_hour(self) -> float | None:
        return None if self.price_cents_per_hour is None else self.price_cents_per_hour / 100

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Instance:
        itype = d.get("instance_type") or {}
        price = itype.get("price_cents_per_hour")
        return cls(
            id=d.get("id", ""), name=d.get("name") or None, status=d.get("status", ""),
            ip=d.get("ip") or None, region=(d.get("region") or {}).get("name"),
            instance_type=itype.get("name"), price_cents_per_hour=None if price is None else int(price),
            ssh_key_names=list(d.get("ssh_key_names") or []),
            file_system_names=list(d.get("file_system_names") or []),
            hostname=d.get("hostname") or None, raw=dict(d),
        )


# ------------------------------------------------------------------------------------------- key


def api_key(environ: Mapping[str, str] | None = None, path: str | os.PathLike | None = None) -> str:
    """The Lambda Cloud API key: ``$LAMBDA_API_KEY``, else the file ``$GPUJOB_HOME/lambda-api-key``
    (``path`` overrides where), which must be the user's own and mode 0600 or stricter."""
    env = os.environ if environ is None else environ
    key = (env.get(API_KEY_ENV) or "").strip()
    if key:
        return key
    if path is None:
        home = env.get("GPUJOB_HOME") or "~/.gpujob"
        path = Path(home).expanduser() / API_KEY_FILE
    path = Path(path)
    how = (f"create a key in the Lambda Cloud dashboard under API keys ({API_KEYS_PAGE}), then "
           f"`export {API_KEY_ENV}=...`, or put it in {path} and `chmod 600 {path}`")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise UserError(f"no Lambda Cloud API key: {API_KEY_ENV} is not set and {path} does not exist",
                        hint=how) from None
    except OSError as e:
        raise UserError(f"cannot read the Lambda Cloud API key file {path}: {e.strerror}",
                        hint=f"make it a plain file of yours: `chmod 600 {path}`") from None
    try:
        st = os.fstat(fd)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise UserError(f"{path} holds a Lambda Cloud API key but belongs to uid {st.st_uid}, not you "
                            f"(uid {os.getuid()})",
                            hint=f"`sudo chown $(id -u) {path} && chmod 600 {path}`")
        if st.st_mode & 0o077:
            raise UserError(f"{path} holds a Lambda Cloud API key but other users may read it "
                            f"(mode {st.st_mode & 0o777:04o})", hint=f"`chmod 600 {path}`")
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
            fd = -1
            key = f.read().strip()
    finally:
        if fd >= 0:
            os.close(fd)
    if not key:
        raise UserError(f"{path} is empty; it should hold your Lambda Cloud API key", hint=how)
    return key


# ---------------------------------------------------------------------------------------- client

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
    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent        # False: the request surely never reached the server


class LambdaClient:
    """One Lambda Cloud account, through the public API v1. ``sleep`` and ``clock`` are injectable so
    tests (and the agent) can wait without really waiting."""

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

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, path: str | None = None,
                         **kwargs: Any) -> LambdaClient:
        """The key from :func:`api_key`, the base URL from ``$GPUJOB_LAMBDA_API_URL`` (or the default)."""
        env = os.environ if environ is None else environ
        return cls(api_key(env, path), env.get(BASE_URL_ENV) or None, **kwargs)

    def __repr__(self) -> str:
        return f"LambdaClient(base_url={self.base_url!r})"

    # ------------------------------------------------------------------------------ instance types

    def instance_types(self) -> dict[str, InstanceType]:
        """Every type Lambda offers, with its price and the regions that have capacity now."""
        data = self._request("GET", "/instance-types", what="list instance types")
        return {name: InstanceType.from_api(item) for name, item in (data or {}).items()}

    # ----------------------------------------------------------------------------------- instances

    def launch(self, *, instance_type: str, region: str | None = None, ssh_key_names: list[str],
               file_system_names: Iterable[str] = (), name: str | None = None) -> str:
        """Launches one instance and returns its id. Capacity is checked first (no launch request is
        spent on a region without it); ``region=None`` takes the first region with capacity."""
        types = self.instance_types()
        itype = types.get(instance_type)
        if itype is None:
            close = difflib.get_close_matches(instance_type, list(types), n=2, cutoff=0.85)
            mean = f"; did you mean {' or '.join(close)}?" if close else ""
            raise LambdaUserError(
                "global/invalid-parameters", f"Lambda Cloud offers no instance type {instance_type!r}{mean}",
                hint="offered now: " + (", ".join(sorted(types)) or "none"))
        if region is None or region not in itype.regions_with_capacity:
            if region is None and itype.regions_with_capacity:
                region = itype.regions_with_capacity[0]
            else:
                raise self._capacity_error(instance_type, region, types)
        body: dict[str, Any] = {"region_name": region, "instance_type_name": instance_type,
                                "ssh_key_names": list(ssh_key_names),
                                "file_system_names": list(file_system_names)}
        if name is not None:
            body["name"] = name
        what = f"launch {instance_type} in {region}"
        reconcile: Callable[[], Any] | None = None
        if name:
            before = {i.id for i in self.instances() if i.name == name}

            def find_launched() -> Any:
                """After an answer that leaves it unknown whether the launch happened: look for it."""
                found = [i.id for i in self.instances() if i.name == name and i.id not in before]
                return {"instance_ids": found[:1]} if found else None

            reconcile = find_launched

        try:
            data = self._request("POST", "/instance-operations/launch", body, what=what,
                                 launch=True, reconcile=reconcile)
        except LambdaError as e:
            if e.code != INSUFFICIENT_CAPACITY:
                raise
            raise self._capacity_error(instance_type, region, self.instance_types(), status=e.status,
                                       suggestion=e.suggestion) from None
        ids = (data or {}).get("instance_ids") or []
        if not ids:
            raise LambdaError("client/bad-response", f"Lambda Cloud answered the launch ({what}) without an "
                              "instance id", hint="check the Lambda Cloud dashboard for a new instance",
                              status=200)
        log.info("launched %s (%s in %s)", ids[0], instance_type, region)
        return ids[0]

    def terminate(self, instance_ids: list[str]) -> list[Instance]:
        ids = list(instance_ids)
        data = self._request("POST", "/instance-operations/terminate", {"instance_ids": ids},
                             what=f"terminate {', '.join(ids)}")
        return [Instance.from_api(d) for d in (data or {}).get("terminated_instances") or []]

    def restart(self, instance_ids: list[str]) -> list[Instance]:
        ids = list(instance_ids)
        data = self._request("POST", "/instance-operations/restart", {"instance_ids": ids},
                             what=f"restart {', '.join(ids)}")
        return [Instance.from_api(d) for d in (data or {}).get("restarted_instances") or []]

    def instances(self) -> list[Instance]:
        """The account's running instances (booting, active, unhealthy, terminating...)."""
        data = self._request("GET", "/instances", what="list instances")
        return [Instance.from_api(d) for d in data or []]

    def instance(self, instance_id: str) -> Instance:
        """One instance; an unknown id is a LambdaUserError with code ``global/object-does-not-exist``."""
        data = self._request("GET", f"/instances/{_segment(instance_id)}", what=f"get instance {instance_id}")
        return Instance.from_api(data or {})

    def rename(self, instance_id: str, name: str) -> Instance:
        data = self._request("POST", f"/instances/{_segment(instance_id)}", {"name": name},
                             what=f"rename instance {instance_id}")
        return Instance.from_api(data or {})

    # ------------------------------------------------------------------------ ssh keys, file systems

    def ssh_keys(self) -> list[dict]:
        return list(self._request("GET", "/ssh-keys", what="list SSH keys") or [])

    def add_ssh_key(self, name: str, public_key: str) -> dict:
        return dict(self._request("POST", "/ssh-keys", {"name": name, "public_key": public_key.strip()},
                                  what=f"add SSH key {name!r}") or {})

    def delete_ssh_key(self, key_id: str) -> None:
        self._request("DELETE", f"/ssh-keys/{_segment(key_id)}", what=f"delete SSH key {key_id}")

    def file_systems(self) -> list[dict]:
        return list(self._request("GET", "/file-systems", what="list file systems") or [])

    def create_file_system(self, name: str, region: str) -> dict:
        return dict(self._request("POST", "/filesystems", {"name": name, "region": region},
                                  what=f"create file system {name!r} in {region}") or {})

    def delete_file_system(self, file_system_id: str) -> None:
        self._request("DELETE", f"/filesystems/{_segment(file_system_id)}",
                      what=f"delete file system {file_system_id}")

    # ------------------------------------------------------------------------------------ plumbing

    def _capacity_error(self, instance_type: str, region: str | None, types: dict[str, InstanceType], *,
                        status: int = 0, suggestion: str | None = None) -> CapacityError:
        itype = types.get(instance_type)
        regions = [r for r in (itype.regions_with_capacity if itype else []) if r != region]
        others = sorted((t for t in types.values() if t.regions_with_capacity and t.name != instance_type),
                        key=lambda t: t.price_cents_per_hour)
        return CapacityError(instance_type, region, regions, alternatives=[t.name for t in others],
                             status=status, suggestion=suggestion)

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

    def _request(self, method: str, path: str, body: Any = None, *, what: str, launch: bool = False,
                 reconcile: Callable[[], Any] | None = None) -> Any:
        """The ``data`` of one API call, with retries. A launch is only re-sent when its first try
        surely did nothing (429, connection refused) or ``reconcile`` found no instance it made."""
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        delay = INITIAL_BACKOFF_S
        started = self._clock()
        last: LambdaError | None = None
        attempt = 0
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
                ambiguous = e.sent
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
            if attempt >= self.max_attempts:
                break
            wait = min(retry_after, RETRY_AFTER_CAP_S) if retry_after is not None else delay
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
            raise _NetworkError(_describe(reason), sent=sent) from None
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


def _segment(value: str) -> str:
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
    return max(0.0, when.timestamp() - time.time())
