"""The Lambda Cloud public API v1 on loopback, for tests: real HTTP, the documented bodies.

Follows Lambda's OpenAPI spec (https://cloud.lambda.ai/api/v1/openapi.json, "Lambda Cloud API"
v1.10.0, rendered at https://docs.lambda.ai/api/cloud) and the billing page
(https://docs.lambda.ai/public-cloud/billing):

- paths: GET /instance-types, POST /instance-operations/{launch,terminate,restart}, GET /instances,
  GET|POST /instances/{id}, GET|POST /ssh-keys, DELETE /ssh-keys/{id}, GET /file-systems,
  POST /filesystems, DELETE /filesystems/{id}, GET /regions (all under /api/v1);
- bodies ``{"data": ...}`` / ``{"error": {"code", "message", "suggestion"}}`` with the spec's default
  messages per code; 401 ``global/invalid-api-key`` for a missing or wrong key; auth by
  ``Bearer <key>``, ``Basic base64(<key>:)`` or ``Basic <key>`` (the spec's security schemes);
- launch: ``region_name``, ``instance_type_name`` and exactly one ``ssh_key_names`` are required;
  unknown type or region, a ``name`` over 64 characters or ``quantity`` > 1 is 400
  ``global/invalid-parameters``; an unknown SSH key or file system is 404
  ``global/object-does-not-exist``; a file system in another region is 400
  ``instance-operations/launch/file-system-in-wrong-region``; no capacity is 400
  ``instance-operations/launch/insufficient-capacity``; over ``max_instances`` is 400
  ``global/quota-exceeded``;
- rate limits (spec's introduction): launches are "limited to one request per 12 seconds" -> a launch
  sooner than ``launch_interval_s`` after the last one is 429; "requests to the API are generally
  limited to one request per second" -> enforced only when ``request_interval_s`` > 0 (off by
  default, so other tests need not pace themselves). The spec documents no 429 body or Retry-After;
  this answers the usual error envelope with code ``global/too-many-requests`` (an assumption) and no
  Retry-After header (``fail_next(..., retry_after=...)`` adds one);
- statuses: booting for ``boot_s`` after launch (no ``ip``/``hostname`` yet), then active with
  ``instance_ip``; terminating for ``terminate_s`` after a terminate, then terminated; restart makes an
  active instance boot again for ``restart_s`` (keeping its ip); restarting one that is not active is
  409 ``global/conflict``. Terminated instances drop out of GET /instances (it lists "running
  instances") but GET /instances/{id} still answers for them; terminating one again is a no-op.
- billing: "Billing begins the moment you launch an instance and the instance passes health checks,
  and ends the moment you terminate the instance", in one-minute increments. ``billed_seconds`` counts
  from the launch request (the conservative reading: boot time is billed) to the terminate request.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

PREFIX = "/api/v1"

REGIONS = {
    "us-east-1": "Virginia, USA",
    "us-east-3": "Washington DC, USA",
    "us-west-1": "California, USA",
    "us-west-2": "Arizona, USA",
    "us-west-3": "Utah, USA",
    "us-south-1": "Texas, USA",
    "us-midwest-1": "Illinois, USA",
}

# name -> the spec's InstanceType fields, plus "capacity": the regions that have some at the start.
DEFAULT_TYPES: dict[str, dict[str, Any]] = {
    "gpu_1x_a10": {
        "description": "1x A10 (24 GB PCIe)", "gpu_description": "A10 (24 GB PCIe)",
        "price_cents_per_hour": 75,
        "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 1400, "gpus": 1},
        "capacity": ["us-east-1", "us-west-1"],
    },
    "gpu_1x_a100_sxm4": {
        "description": "1x A100 (40 GB SXM4)", "gpu_description": "A100 (40 GB SXM4)",
        "price_cents_per_hour": 129,
        "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": 1},
        "capacity": [],
    },
    "gpu_1x_h100_pcie": {
        "description": "1x H100 (80 GB PCIe)", "gpu_description": "H100 (80 GB PCIe)",
        "price_cents_per_hour": 249,
        "specs": {"vcpus": 26, "memory_gib": 200, "storage_gib": 1024, "gpus": 1},
        "capacity": ["us-west-1", "us-south-1"],
    },
    "gpu_1x_h100_sxm5": {
        "description": "1x H100 (80 GB SXM5)", "gpu_description": "H100 (80 GB SXM5)",
        "price_cents_per_hour": 329,
        "specs": {"vcpus": 26, "memory_gib": 225, "storage_gib": 2816, "gpus": 1},
        "capacity": ["us-east-3"],
    },
    "gpu_1x_gh200": {
        "description": "1x GH200 (96 GB)", "gpu_description": "GH200 (96 GB)",
        "price_cents_per_hour": 149,
        "specs": {"vcpus": 64, "memory_gib": 432, "storage_gib": 4096, "gpus": 1},
        "capacity": ["us-east-3"],
    },
    "gpu_8x_a100_80gb_sxm4": {
        "description": "8x A100 (80 GB SXM4)", "gpu_description": "A100 (80 GB SXM4)",
        "price_cents_per_hour": 1432,
        "specs": {"vcpus": 240, "memory_gib": 1800, "storage_gib": 20480, "gpus": 8},
        "capacity": [],
    },
    "gpu_8x_h100_sxm5": {
        "description": "8x H100 (80 GB SXM5)", "gpu_description": "H100 (80 GB SXM5)",
        "price_cents_per_hour": 2392,
        "specs": {"vcpus": 208, "memory_gib": 1800, "storage_gib": 24780, "gpus": 8},
        "capacity": [],
    },
}

# code -> (HTTP status, the spec's default message, default suggestion)
ERRORS: dict[str, tuple[int, str, str | None]] = {
    "global/invalid-api-key": (401, "API key was invalid, expired, or deleted.",
                               "Check your API key or create a new one, then try again."),
    "global/account-inactive": (403, "Your account is inactive.",
                                "Make sure you have verified your email address and have a valid payment "
                                "method. Contact Support if problems continue."),
    "global/invalid-address": (403, "Your billing address is invalid.",
                               "Make sure your billing address is valid. Contact Support if problems continue."),
    "global/forbidden": (403, "Forbidden.", None),
    "global/invalid-parameters": (400, "Invalid request data.", None),
    "global/object-does-not-exist": (404, "Specified instance does not exist.", None),
    "global/not-found": (404, "The requested resource was not found.", None),
    "global/duplicate": (400, "A resource with this name already exists.", None),
    "global/conflict": (409, "The request conflicts with the current state of the resource.", None),
    "global/quota-exceeded": (400, "Quota exceeded.", "Contact Support to increase your quota."),
    "instance-operations/launch/insufficient-capacity": (
        400, "Not enough capacity to fulfill launch request.",
        "Choose an instance type with more availability, or try again later."),
    "instance-operations/launch/file-system-in-wrong-region": (
        400, "File system is in a different region than the instance.", None),
    "filesystems/filesystem-in-use": (400, "Filesystem is in use.", None),
    "global/internal-error": (500, "An internal server error occurred.",
                              "Try again later. Contact Support if the problem persists."),
    "provider/internal-unavailable": (503, "Provider unavailable", "Try again shortly"),
    "global/too-many-requests": (429, "Too many requests.", "Wait before retrying."),
}


class ApiFailure(Exception):
    def __init__(self, code: str, message: str | None = None, *, status: int | None = None,
                 suggestion: str | None = None) -> None:
        default_status, default_message, default_suggestion = ERRORS.get(code, (500, "Error.", None))
        super().__init__(message or default_message)
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.suggestion = suggestion if suggestion is not None else default_suggestion

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.suggestion:
            error["suggestion"] = self.suggestion
        return {"error": error}


class _InstanceRecord(dict):
    """One instance as the emulator keeps it; ``rec["status"]`` and ``rec["ip"]`` are read live from
    the clock."""

    def __init__(self, emulator: LambdaEmulator, **fields: Any) -> None:
        super().__init__(status=None, ip=None, **fields)
        self._emulator = emulator

    def __getitem__(self, key: str) -> Any:
        if key == "status":
            return self._emulator._status(self)
        if key == "ip":
            return self._emulator._ip(self)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __repr__(self) -> str:
        shown = {k: self[k] for k in self}
        return f"InstanceRecord({shown!r})"


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LambdaEmulator:
    def __init__(self, *, api_key: str | None = None, clock: Callable[[], float] = time.time,
                 boot_s: float = 30.0, terminate_s: float = 10.0, restart_s: float = 10.0,
                 instance_ip: str = "127.0.0.1", launch_interval_s: float = 12.0,
                 request_interval_s: float = 0.0, types: dict[str, dict[str, Any]] | None = None,
                 max_instances: int | None = None) -> None:
        self.api_key = api_key or f"test-key-{secrets.token_hex(8)}"
        self.clock = clock
        self.boot_s = boot_s
        self.terminate_s = terminate_s
        self.restart_s = restart_s
        self.instance_ip = instance_ip
        self.launch_interval_s = launch_interval_s
        self.request_interval_s = request_interval_s
        self.max_instances = max_instances
        source = DEFAULT_TYPES if types is None else types
        self.types: dict[str, dict[str, Any]] = {
            name: {k: v for k, v in t.items() if k != "capacity"} for name, t in source.items()}
        self.capacity: dict[str, set[str]] = {name: set(t.get("capacity", ())) for name, t in source.items()}
        self.regions = dict(REGIONS)
        self.instances: dict[str, _InstanceRecord] = {}
        self.ssh_keys: dict[str, dict] = {}            # id -> {id, name, public_key}
        self.file_systems: dict[str, dict] = {}        # id -> the spec's Filesystem
        self.requests: list[dict] = []
        self.terminate_calls: list[tuple[float, list[str]]] = []
        self.restart_calls: list[tuple[float, list[str]]] = []
        self.launch_times: list[float] = []            # every launch request the limiter let through
        self._last_request_at: float | None = None
        self._faults: list[dict] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LambdaEmulator.start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}{PREFIX}"

    def start(self) -> LambdaEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                emulator._handle(self, "GET")

            def do_POST(self) -> None:
                emulator._handle(self, "POST")

            def do_DELETE(self) -> None:
                emulator._handle(self, "DELETE")

            def do_PUT(self) -> None:
                emulator._handle(self, "PUT")

            def do_PATCH(self) -> None:
                emulator._handle(self, "PATCH")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="lambda-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LambdaEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ knobs for tests

    def fail_next(self, method: str, path_prefix: str, status: int, code: str | None = "global/internal-error",
                  times: int = 1, retry_after: float | None = None, message: str | None = None,
                  body: str | None = None, headers: dict[str, str] | None = None,
                  after: bool = False) -> None:
        """The next ``times`` requests matching ``method`` ("*" for any) and ``path_prefix`` (with or
        without /api/v1) get ``status`` with the error envelope for ``code`` -- or, given ``body``,
        exactly that text (a proxy's HTML page, say), plus ``headers``. Checked before
        authentication. ``after=True``: the request is carried out first and only its answer is
        replaced (a gateway that lost the answer: the launch did happen)."""
        if not path_prefix.startswith(PREFIX):
            path_prefix = PREFIX + (path_prefix if path_prefix.startswith("/") else "/" + path_prefix)
        with self._lock:
            self._faults.append({"method": method.upper(), "prefix": path_prefix, "status": status,
                                 "code": code, "times": times, "retry_after": retry_after,
                                 "message": message, "body": body, "headers": dict(headers or {}),
                                 "after": after})

    def add_ssh_key(self, name: str, public_key: str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest test") -> dict:
        with self._lock:
            key = {"id": uuid.uuid4().hex, "name": name, "public_key": public_key}
            self.ssh_keys[key["id"]] = key
            return dict(key)

    def add_file_system(self, name: str, region: str = "us-west-1") -> dict:
        with self._lock:
            return self._fs_view(self._create_file_system(name, region))

    def make_unhealthy(self, instance_id: str) -> None:
        with self._lock:
            self.instances[instance_id]["unhealthy"] = True

    def status(self, instance_id: str) -> str:
        return self.instances[instance_id]["status"]

    def billed_seconds(self, instance_id: str) -> float:
        """Seconds billed so far: from the launch request to the terminate request (or now)."""
        with self._lock:
            rec = self.instances[instance_id]
            end = rec["terminate_requested_at"]
            end = self.clock() if end is None else end
            return max(0.0, end - rec["launched_at"])

    def billed_cents(self, instance_id: str) -> float:
        """The charge so far, billed in one-minute increments (the billing page) at the launch price."""
        rec = self.instances[instance_id]
        minutes = math.ceil(self.billed_seconds(instance_id) / 60)
        return minutes * rec["instance_type"]["price_cents_per_hour"] / 60

    def live_instances(self) -> list[str]:
        """Ids of instances still billed (not yet asked to terminate)."""
        with self._lock:
            return [i for i, r in self.instances.items() if r["terminate_requested_at"] is None]

    # ---------------------------------------------------------------------------------- life cycle

    def _status(self, rec: dict) -> str:
        now = self.clock()
        t = dict.__getitem__(rec, "terminate_requested_at")
        if t is not None:
            return "terminated" if now >= t + self.terminate_s else "terminating"
        if now < dict.__getitem__(rec, "launched_at") + self.boot_s:
            return "booting"
        restarted = dict.get(rec, "restarted_at")
        if restarted is not None and now < restarted + self.restart_s:
            return "booting"
        return "unhealthy" if dict.get(rec, "unhealthy") else "active"

    def _ip(self, rec: dict) -> str | None:
        booted = self.clock() >= dict.__getitem__(rec, "launched_at") + self.boot_s
        t = dict.__getitem__(rec, "terminate_requested_at")
        if t is not None:
            booted = t >= dict.__getitem__(rec, "launched_at") + self.boot_s
        return self.instance_ip if booted else None

    # ------------------------------------------------------------------------------------ the API

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raw_path = handler.path
        path, _, query = raw_path.partition("?")
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        record = {"method": method, "path": path, "query": query, "headers": dict(handler.headers.items()),
                  "body": body, "time": self.clock()}
        with self._lock:
            self.requests.append(record)
            status, payload, extra = self._respond(method, path, body, raw, handler.headers.get("Authorization"))
        record["status"] = status
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html" if isinstance(payload, str) else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _respond(self, method: str, path: str, body: Any, raw: bytes,
                 authorization: str | None) -> tuple[int, Any, dict]:
        fault = next((f for f in self._faults if f["times"] > 0 and f["method"] in ("*", method)
                      and path.startswith(f["prefix"])), None)
        if fault is not None:
            fault["times"] -= 1
            self._faults = [f for f in self._faults if f["times"] > 0]
            if fault["after"]:
                self._answer(method, path, body, raw, authorization)
            extra = dict(fault["headers"])
            if fault["retry_after"] is not None:
                extra["Retry-After"] = f"{fault['retry_after']:g}"
            if fault["body"] is not None:
                return fault["status"], fault["body"], extra
            failure = ApiFailure(fault["code"] or "global/internal-error", fault["message"],
                                 status=fault["status"])
            return fault["status"], failure.body(), extra
        return self._answer(method, path, body, raw, authorization)

    def _answer(self, method: str, path: str, body: Any, raw: bytes,
                authorization: str | None) -> tuple[int, Any, dict]:
        try:
            if not self._authorized(authorization):
                raise ApiFailure("global/invalid-api-key")
            now = self.clock()
            if self.request_interval_s > 0:
                last, self._last_request_at = self._last_request_at, now
                if last is not None and now - last < self.request_interval_s:
                    raise ApiFailure("global/too-many-requests")
            if raw and not isinstance(body, (dict, list)):
                raise ApiFailure("global/invalid-parameters", "Request body is not valid JSON.")
            return 200, {"data": self._route(method, path, body or {})}, {}
        except ApiFailure as failure:
            return failure.status, failure.body(), {}

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return secrets.compare_digest(value, self.api_key)
        if scheme.lower() == "basic":
            if secrets.compare_digest(value, self.api_key):
                return True
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            return secrets.compare_digest(decoded.rstrip(":"), self.api_key) if decoded.count(":") <= 1 else False
        return False

    def _route(self, method: str, path: str, body: dict) -> Any:
        if not path.startswith(PREFIX + "/"):
            raise ApiFailure("global/not-found")
        parts = path[len(PREFIX) + 1:].rstrip("/").split("/")
        match method, parts:
            case "GET", ["instance-types"]:
                return self._instance_types()
            case "GET", ["regions"]:
                return [{"name": n, "description": d} for n, d in self.regions.items()]
            case "POST", ["instance-operations", "launch"]:
                return self._launch(body)
            case "POST", ["instance-operations", "terminate"]:
                return {"terminated_instances": self._terminate(body)}
            case "POST", ["instance-operations", "restart"]:
                return {"restarted_instances": self._restart(body)}
            case "GET", ["instances"]:
                return [self._view(r) for r in self.instances.values() if r["status"] != "terminated"]
            case "GET", ["instances", iid]:
                return self._view(self._instance(iid))
            case "POST", ["instances", iid]:
                rec = self._instance(iid)
                name = body.get("name")
                if name is not None:
                    if not isinstance(name, str) or len(name) > 64:
                        raise ApiFailure("global/invalid-parameters", "name: must be a string of at most 64 characters")
                    rec["name"] = name
                return self._view(rec)
            case "GET", ["ssh-keys"]:
                return [dict(k) for k in self.ssh_keys.values()]
            case "POST", ["ssh-keys"]:
                return self._add_ssh_key(body)
            case "DELETE", ["ssh-keys", kid]:
                if kid not in self.ssh_keys:
                    raise ApiFailure("global/not-found", "SSH key was not found.")
                del self.ssh_keys[kid]
                return {}
            case "GET", ["file-systems"]:
                return [self._fs_view(f) for f in self.file_systems.values()]
            case "POST", ["filesystems"]:
                return self._fs_view(self._create_file_system(body.get("name"), body.get("region")))
            case "DELETE", ["filesystems", fid]:
                fs = self.file_systems.get(fid)
                if fs is None:
                    raise ApiFailure("global/object-does-not-exist", "Filesystem was not found.")
                if self._fs_in_use(fs["name"]):
                    raise ApiFailure("filesystems/filesystem-in-use",
                                     f"Filesystem {fs['name']!r} is mounted on one or more instances.",
                                     suggestion="Terminate the instances using it first.")
                del self.file_systems[fid]
                return {"deleted_ids": [fid]}
        raise ApiFailure("global/not-found")

    # ------------------------------------------------------------------------------------ handlers

    def _type_view(self, name: str) -> dict:
        t = self.types[name]
        return {"name": name, "description": t["description"], "gpu_description": t["gpu_description"],
                "price_cents_per_hour": t["price_cents_per_hour"], "specs": dict(t["specs"])}

    def _instance_types(self) -> dict:
        return {name: {"instance_type": self._type_view(name),
                       "regions_with_capacity_available": [
                           {"name": r, "description": self.regions.get(r, r)}
                           for r in sorted(self.capacity.get(name, ()))]}
                for name in self.types}

    def _launch(self, body: dict) -> dict:
        now = self.clock()
        if self.launch_times and now - self.launch_times[-1] < self.launch_interval_s:
            raise ApiFailure("global/too-many-requests",
                             f"Launch requests are limited to one request per {self.launch_interval_s:g} seconds.")
        self.launch_times.append(now)
        region = body.get("region_name")
        type_name = body.get("instance_type_name")
        keys = body.get("ssh_key_names")
        missing = [f for f in ("region_name", "instance_type_name", "ssh_key_names") if body.get(f) is None]
        if missing:
            raise ApiFailure("global/invalid-parameters", f"Missing required field(s): {', '.join(missing)}.")
        if type_name not in self.types:
            raise ApiFailure("global/invalid-parameters", f"Invalid instance type name {type_name!r}.")
        if region not in self.regions:
            raise ApiFailure("global/invalid-parameters", f"Invalid region name {region!r}.")
        if not isinstance(keys, list) or len(keys) != 1:
            raise ApiFailure("global/invalid-parameters", "Exactly one SSH key must be specified.")
        quantity = body.get("quantity", 1)
        if quantity != 1:
            raise ApiFailure("global/invalid-parameters", "Requested too many instances.")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            raise ApiFailure("global/invalid-parameters", "name: must be a string of at most 64 characters.")
        known_keys = {k["name"] for k in self.ssh_keys.values()}
        if keys[0] not in known_keys:
            raise ApiFailure("global/object-does-not-exist",
                             f"SSH key with name {keys[0]!r} does not exist, or you do not have "
                             "permission to access it.",
                             suggestion="Check the name of the SSH key, or add it first.")
        fs_names = body.get("file_system_names") or []
        for fs_name in fs_names:
            fs = next((f for f in self.file_systems.values() if f["name"] == fs_name), None)
            if fs is None:
                raise ApiFailure("global/object-does-not-exist",
                                 f"Filesystem with name {fs_name!r} does not exist in region {region!r}, "
                                 "or you do not have permission to access it.",
                                 suggestion="Check the name of the filesystem.")
            if fs["region"] != region:
                raise ApiFailure("instance-operations/launch/file-system-in-wrong-region",
                                 f"Filesystem {fs_name!r} is in {fs['region']}, not {region}.")
        if region not in self.capacity.get(type_name, set()):
            raise ApiFailure("instance-operations/launch/insufficient-capacity")
        live = [r for r in self.instances.values() if r["terminate_requested_at"] is None]
        if self.max_instances is not None and len(live) >= self.max_instances:
            raise ApiFailure("global/quota-exceeded")
        iid = uuid.uuid4().hex
        self.instances[iid] = _InstanceRecord(
            self, id=iid, name=name, region=region, instance_type=self._type_view(type_name),
            ssh_key_names=list(keys), file_system_names=list(fs_names), hostname=body.get("hostname"),
            user_data=body.get("user_data"), tags=list(body.get("tags") or []), launched_at=now,
            terminate_requested_at=None, restarted_at=None, unhealthy=False,
            jupyter_token=secrets.token_hex(16))
        return {"instance_ids": [iid]}

    def _ids(self, body: dict) -> list[str]:
        ids = body.get("instance_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ApiFailure("global/invalid-parameters", "instance_ids: a non-empty list of instance ids is required.")
        for iid in ids:
            self._instance(iid)
        return ids

    def _terminate(self, body: dict) -> list[dict]:
        ids = self._ids(body)
        now = self.clock()
        for iid in ids:
            rec = self.instances[iid]
            if rec["terminate_requested_at"] is None:
                rec["terminate_requested_at"] = now
        self.terminate_calls.append((now, list(ids)))
        return [self._view(self.instances[i]) for i in ids]

    def _restart(self, body: dict) -> list[dict]:
        ids = self._ids(body)
        for iid in ids:
            status = self.instances[iid]["status"]
            if status not in ("active", "unhealthy"):
                raise ApiFailure("global/conflict", f"Instance {iid} cannot be restarted while {status}.")
        now = self.clock()
        for iid in ids:
            self.instances[iid]["restarted_at"] = now
            self.instances[iid]["unhealthy"] = False
        self.restart_calls.append((now, list(ids)))
        return [self._view(self.instances[i]) for i in ids]

    def _instance(self, iid: str) -> _InstanceRecord:
        rec = self.instances.get(iid)
        if rec is None:
            raise ApiFailure("global/object-does-not-exist")
        return rec

    def _view(self, rec: _InstanceRecord) -> dict:
        """The spec's Instance object."""
        status = rec["status"]
        ip = rec["ip"]
        unavailable = {"available": False, "reason_code": "vm-has-not-launched",
                       "reason_description": "The instance has not launched yet."}
        if status in ("terminating", "terminated"):
            unavailable = {"available": False, "reason_code": "vm-is-terminating",
                           "reason_description": "The instance is terminating."}
        ready = {"available": True}
        up = status in ("active", "unhealthy")
        view: dict[str, Any] = {
            "id": rec["id"], "status": status, "ssh_key_names": list(rec["ssh_key_names"]),
            "file_system_names": list(rec["file_system_names"]),
            "region": {"name": rec["region"], "description": self.regions.get(rec["region"], rec["region"])},
            "instance_type": dict(rec["instance_type"]),
            "actions": {"migrate": {"available": False, "reason_code": "vm-is-too-old",
                                    "reason_description": "Migration is not offered for this instance."},
                        "rebuild": ready if up else unavailable, "restart": ready if up else unavailable,
                        "cold_reboot": ready if up else unavailable,
                        "terminate": ready if status not in ("terminating", "terminated") else unavailable},
            "is_reserved": False, "tags": list(rec["tags"]),
        }
        if rec["name"] is not None:
            view["name"] = rec["name"]
        if ip is not None:
            view["ip"] = ip
            view["private_ip"] = "10.0.0.2"
            view["hostname"] = rec["hostname"] or ip.replace(".", "-")
            view["jupyter_token"] = rec["jupyter_token"]
            view["jupyter_url"] = f"https://jupyter-{rec['id']}.lambdaspaces.com/?token={rec['jupyter_token']}"
        mounts = [{"mount_point": f["mount_point"], "file_system_id": f["id"]}
                  for f in self.file_systems.values() if f["name"] in rec["file_system_names"]]
        if mounts:
            view["file_system_mounts"] = mounts
        return view

    def _add_ssh_key(self, body: dict) -> dict:
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ApiFailure("global/invalid-parameters", "name: must be 1 to 64 characters.")
        if any(k["name"] == name for k in self.ssh_keys.values()):
            raise ApiFailure("global/invalid-parameters", f"An SSH key named {name!r} already exists.")
        public_key = body.get("public_key")
        if public_key is None:      # the API generates a pair and returns the private half once
            key = self.add_ssh_key(name, f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{secrets.token_hex(16)} {name}")
            private = "-----BEGIN OPENSSH PRIVATE KEY-----\nemulated\n-----END OPENSSH PRIVATE KEY-----\n"
            return {**key, "private_key": private}
        if not isinstance(public_key, str) or not 1 <= len(public_key) <= 4096 or \
                not public_key.split(" ", 1)[0].startswith(("ssh-", "ecdsa-", "sk-")):
            raise ApiFailure("global/invalid-parameters", "public_key: not a valid SSH public key.")
        return self.add_ssh_key(name, public_key)

    def _create_file_system(self, name: Any, region: Any) -> dict:
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z]+[0-9a-zA-Z-]*", name) or len(name) > 60:
            raise ApiFailure("global/invalid-parameters",
                             "name: letters first, then letters, digits and dashes (60 at most).")
        if region not in self.regions:
            raise ApiFailure("global/invalid-parameters", f"Invalid region name {region!r}.")
        if any(f["name"] == name for f in self.file_systems.values()):
            raise ApiFailure("global/duplicate", f"A filesystem named {name!r} already exists.")
        fs = {"id": uuid.uuid4().hex, "name": name, "mount_point": f"/lambda/nfs/{name}",
              "created": _iso(self.clock()), "region": region, "bytes_used": 0,
              "created_by": {"id": uuid.uuid4().hex, "email": "me@example.com", "status": "active"}}
        self.file_systems[fs["id"]] = fs
        return fs

    def _fs_in_use(self, name: str) -> bool:
        return any(name in r["file_system_names"] and r["status"] != "terminated" for r in self.instances.values())

    def _fs_view(self, fs: dict) -> dict:
        return {**fs, "region": {"name": fs["region"], "description": self.regions.get(fs["region"], fs["region"])},
                "is_in_use": self._fs_in_use(fs["name"])}
