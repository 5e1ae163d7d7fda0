"""A job request as one container: what to create, what to copy in, what to show in a dry run.
Pure functions over the request: no engine, no SDK (``device_requests`` are plain dicts, the
shape the Engine API takes).

What the container gets, and why:

- the job image (``image``, the spec's ``runtime.image`` as the caller passes it; else the gpujob
  image: the CUDA tag with GPUs, the -cpu one without); the job's command behind a small ``sh``
  entry (below); ``--init`` so signals reach the job and zombies are reaped;
- GPUs as a device request (``resources.gpus``; with several, a train/evaluate job's command is the
  launcher, torchrun, one process per GPU: :mod:`gpujob.backends.launch`), ``/dev/shm`` of
  ``resources.shm`` (the engine's 64 MiB default breaks data loaders), memory and CPU limits when given;
- the volume ``gpujob-hf-cache`` at /cache (``HF_HOME=/cache/huggingface``): models and datasets
  are downloaded once per engine, not once per job;
- on a local engine: the working directory at its own path, read-only (relative paths in the
  spec mean what they mean on your machine), the output directory at its own path, writable,
  and your uid:gid as the user, so the outputs belong to you;
  on a remote engine: outputs go to a volume of the job's own, ``gpujob-out-<id>`` at /outputs,
  which is copied back to ``output.dir`` here when the job ends, then removed;
- labels ``gpujob.dev/id``, ``gpujob.dev/name``, ``gpujob.dev/kind``; never a secret.

Secrets are neither environment variables of the container (``docker inspect`` shows those) nor
labels: they are copied into the created container as a file only its user can read, which the
entry sources and deletes before the job starts.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gpujob import redact
from gpujob.backends.base import JobRequest
from gpujob.backends.docker import mask_entry
from gpujob.defaults import HF_CACHE
from gpujob.image_names import default_image as image_for
from gpujob.wire import (GPUS_LABEL, KIND_LABEL, MANAGED_LABEL, MANAGED_VALUE, PRIORITY_LABEL, READY_FILE,
                         SHARE_LABEL, SUBMITTED_LABEL)

RUN_DIR = "/run/gpujob"                 # the spec and (briefly) the secrets, inside the container
SPEC_FILE = f"{RUN_DIR}/spec.json"
SECRETS_FILE = f"{RUN_DIR}/secrets.env"
MASK_FILE = f"{RUN_DIR}/mask.py"            # runs a job given secrets with them masked in its output
REDACT_FILE = f"{RUN_DIR}/gpujob_redact.py"  # gpujob.redact, beside it
SECRET_NAMES_VAR = mask_entry.NAMES_VAR      # the secrets' names (never values), for mask.py
CACHE_VOLUME = HF_CACHE
CACHE_DIR = "/cache"
OUTPUTS_DIR = "/outputs"                # remote engines: the job's outputs volume, until copied back
KILL_AFTER_S = 30                        # limits.max_runtime: SIGTERM, then SIGKILL this much later
GRANT_DIR = "/run/gpujob-gpus"          # a rented host's GPU grants (its agent's queue writes them), read-only

# The entry: read the secrets file into the environment and delete it, enforce limits.max_runtime
# with timeout(1) when the image has it, then exec the job (so it gets the signals). A job given secrets
# runs under mask.py (.mask_entry), which passes signals on and masks the secrets in what it prints.
# A job in a rented host's GPU queue (GPUJOB_GPU_GRANT set) is started by the host's agent once it has
# written the GPUs it gives the job: the entry makes them the job's CUDA_VISIBLE_DEVICES.
ENTRY = f"""\
f={SECRETS_FILE}
if [ -f "$f" ]; then set -a; . "$f"; set +a; rm -f "$f"; fi
if [ -n "$GPUJOB_GPU_GRANT" ]; then
  if [ ! -s "$GPUJOB_GPU_GRANT" ]; then
    echo "gpujob: started without GPUs from the host's GPU queue ($GPUJOB_GPU_GRANT is missing); not running" >&2
    exit 125
  fi
  CUDA_VISIBLE_DEVICES=$(cat "$GPUJOB_GPU_GRANT"); export CUDA_VISIBLE_DEVICES
  echo "gpujob: GPUs from the host's GPU queue: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >&2
fi
if [ -n "$GPUJOB_SECRET_NAMES" ]; then
  if command -v python3 >/dev/null 2>&1 && [ -f {MASK_FILE} ]; then
    set -- python3 -I -S {MASK_FILE} "$@"
  else
    echo "gpujob: python3 is not in the image, so a secret the job prints is not masked in its log" >&2
  fi
fi
if [ -n "$GPUJOB_MAX_RUNTIME_S" ]; then
  if command -v timeout >/dev/null 2>&1; then
    exec timeout -s TERM -k {KILL_AFTER_S} "$GPUJOB_MAX_RUNTIME_S" "$@"
  fi
  echo "gpujob: timeout(1) is not in the image, so limits.max_runtime is not enforced" >&2
fi
exec "$@"
"""


def default_image(gpus: int) -> str:
    return image_for(gpus)


def outputs_volume(job_id: str) -> str:
    return f"gpujob-out-{job_id}"


def container_name(request: JobRequest) -> str:
    head = re.sub(r"[^a-zA-Z0-9_.-]+", "-", request.name)[:40].strip("-.") or "job"
    return f"gpujob-{head}-{request.job_id}"


@dataclass
class Plan:
    image: str
    name: str
    create: dict[str, Any]          # keyword arguments for the SDK's containers.create
    files: list[tuple[str, bytes, int]] = field(default_factory=list)  # (path, content, mode), copied in
    run_dir_owner: tuple[int, int] | None = None
    out_in_container: str = ""
    local: bool = True
    outputs_on_host: str | None = None
    queued: bool = False            # created, not started: the host's GPU queue starts it


def plan(request: JobRequest, *, local: bool, image: str | None = None, user: tuple[int, int] | None = None,
         secrets: Mapping[str, str] | None = None, outputs_on_host: str | None = None,
         data_mounts: Mapping[str, str] | None = None, gpu_grants: str | None = None,
         submitted: float | None = None) -> Plan:
    """``gpu_grants``: a rented host's grants folder (:attr:`gpujob.hosts.layout.HostLayout.gpu_grants_dir`):
    a GPU job then joins the host's GPU queue: it is created with labels saying what it asks for
    (submitted at ``submitted``) and a device request for all the host's GPUs, and the agent starts it
    once it has written the job's own GPUs to the grant file the entry reads. ``outputs_on_host``: a remote engine's folder (on its machine) to bind-mount at /outputs
    instead of the job's own volume, e.g. a rented host's persistent file system. ``data_mounts``:
    folders of the engine's machine -> paths in the container, mounted read-only (a rented host's
    uploaded data)."""
    res = request.spec.resources
    image = image or default_image(request.gpus)
    name = container_name(request)
    uri_output = "://" in request.output_dir
    if uri_output or local:
        out = request.output_dir
    else:
        out = OUTPUTS_DIR
    argv = [SPEC_FILE if arg == "{spec}" else arg for arg in request.command]
    env = {
        **request.env,
        "GPUJOB_JOB_ID": request.job_id,
        "GPUJOB_JOB_NAME": request.name,
        "GPUJOB_SPEC": SPEC_FILE,
        "GPUJOB_OUTPUT_DIR": out,
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "PYTHONUNBUFFERED": "1",
    }
    names = sorted(secrets) if secrets is not None else sorted(request.secret_names)  # None: a dry run
    if names:  # the names, never the values: the entry runs the job under mask.py, masking them
        env[SECRET_NAMES_VAR] = ",".join(names)
    if request.deadline_s:  # limits.max_runtime, or limits.max_cost as running time if that comes first
        env["GPUJOB_MAX_RUNTIME_S"] = str(request.deadline_s)
    mounts: list[dict[str, Any]] = [
        {"Type": "volume", "Source": CACHE_VOLUME, "Target": CACHE_DIR, "ReadOnly": False}]
    create: dict[str, Any] = {
        "image": image,
        "name": name,
        "entrypoint": ["/bin/sh", "-c", ENTRY, "gpujob-entry"],
        "command": argv,
        "environment": env,
        "labels": {**request.labels, MANAGED_LABEL: MANAGED_VALUE, KIND_LABEL: request.kind},
        "init": True,
        "stop_signal": "SIGTERM",
        "shm_size": res.shm_bytes,
        "detach": True,
    }
    if local:
        if request.workdir != "/":  # never the whole machine
            mounts.append({"Type": "bind", "Source": request.workdir, "Target": request.workdir, "ReadOnly": True})
        if not uri_output:
            mounts.append({"Type": "bind", "Source": out, "Target": out, "ReadOnly": False})
        create["working_dir"] = request.workdir
        if user is not None:
            create["user"] = f"{user[0]}:{user[1]}"
            env["HOME"] = "/tmp"  # your uid has no home in the image
    elif not uri_output and outputs_on_host:
        mounts.append({"Type": "bind", "Source": outputs_on_host, "Target": OUTPUTS_DIR, "ReadOnly": False})
    elif not uri_output:
        mounts.append({"Type": "volume", "Source": outputs_volume(request.job_id), "Target": OUTPUTS_DIR,
                       "ReadOnly": False})
    mounts.extend({"Type": "bind", "Source": source, "Target": target, "ReadOnly": True}
                  for source, target in (data_mounts or {}).items())
    create["mounts"] = mounts
    queued = _request_gpus(create, request, gpu_grants, submitted)
    if res.memory:
        create["mem_limit"] = res.memory_bytes
    if res.cpu is not None:
        create["nano_cpus"] = int(res.cpu * 1e9)
    return Plan(image=image, name=name, create=create, files=_files(request, secrets, queued), out_in_container=out,
                local=local, outputs_on_host=outputs_on_host if not local and not uri_output else None, queued=queued)


def _request_gpus(create: dict[str, Any], request: JobRequest, gpu_grants: str | None,
                  submitted: float | None) -> bool:
    """Add the job's GPUs to ``create``: a device request for them, or, in a rented host's GPU queue
    (``gpu_grants``), for every GPU of the host, the grant folder and the labels the queue reads.
    Whether the job is queued."""
    res, env, mounts = request.spec.resources, create["environment"], create["mounts"]
    queued = bool(request.gpus and gpu_grants)
    if queued:
        mounts.append({"Type": "bind", "Source": gpu_grants, "Target": GRANT_DIR, "ReadOnly": True})
        env["GPUJOB_GPU_GRANT"] = f"{GRANT_DIR}/{request.job_id}"
        create["labels"].update({GPUS_LABEL: str(request.gpus), PRIORITY_LABEL: str(request.spec.priority),
                                 SUBMITTED_LABEL: f"{submitted if submitted is not None else time.time():.6f}",
                                 SHARE_LABEL: "true" if res.share_gpus else "false"})
        # every GPU of the host, so the one the queue gives is there; CUDA_VISIBLE_DEVICES picks it
        create["device_requests"] = [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
    elif request.gpus:
        create["device_requests"] = [{"Driver": "", "Count": request.gpus, "Capabilities": [["gpu"]]}]
    return queued


def _files(request: JobRequest, secrets: Mapping[str, str] | None, queued: bool) -> list[tuple[str, bytes, int]]:
    """What is copied into the created container: the spec, the secrets (a file only its user reads) and,
    for the host's GPU queue, the ready mark."""
    files = [(SPEC_FILE, json.dumps(request.spec_data(), indent=2).encode(), 0o400)]
    if secrets:
        body = "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(secrets.items()))
        files.append((SECRETS_FILE, body.encode(), 0o400))
        files += [(MASK_FILE, Path(mask_entry.__file__).read_bytes(), 0o444),
                  (REDACT_FILE, Path(redact.__file__).read_bytes(), 0o444)]
    if queued:  # last: the host's queue starts the container only once everything is in
        files.append((READY_FILE, b"", 0o444))
    return files


def archive(files: list[tuple[str, bytes, int]], owner: tuple[int, int] | None,
            extra_dirs: tuple[str, ...] = ()) -> bytes:
    """A tar of ``files`` (absolute paths) to extract at ``/``. Their folders and ``extra_dirs`` are
    owned by ``owner`` (mode 0700); without a known owner (an image whose user is a name) files
    are readable by all and folders open to all, so whoever the job runs as can use them."""
    buf = io.BytesIO()
    now = time.time()
    dirs = sorted({path.rsplit("/", 1)[0] for path, _, _ in files} | set(extra_dirs))
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d.lstrip("/"))
            info.type, info.mtime = tarfile.DIRTYPE, now
            info.mode = 0o700 if owner else 0o1777
            if owner:
                info.uid, info.gid = owner
            tar.addfile(info)
        for path, data, mode in files:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mtime = len(data), now
            info.mode = mode if owner else 0o444
            if owner:
                info.uid, info.gid = owner
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_user(config_user: str | None) -> tuple[int, int] | None:
    """The uid:gid an image runs as, when its USER says it in numbers ('' means root)."""
    text = (config_user or "").strip()
    if not text:
        return (0, 0)
    uid, _, gid = text.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return (int(uid), int(gid or uid))
    return None


def describe(p: Plan, request: JobRequest, host: str) -> str:
    """The dry run: what `gpujob submit` will ask the engine for."""
    c = p.create
    env = {**c["environment"], **{n: "<from your environment: copied in as a file, never shown>"
                                  for n in request.secret_names}}
    mounts = [f"  {m['Source']} -> {m['Target']}" + (" (read-only)" if m["ReadOnly"] else "")
              + (" [volume]" if m["Type"] == "volume" else "") for m in c["mounts"]]
    gpus = f"{request.gpus} (device request, capabilities [gpu])" if request.gpus else "none"
    if p.queued:
        gpus = (f"{request.gpus} of its own, from the host's GPU queue (priority {request.spec.priority}"
                + (", shared: resources.share_gpus" if request.spec.resources.share_gpus else "")
                + "): created now, started by the host's agent once they are free, as CUDA_VISIBLE_DEVICES")
    lines = [
        f"backend: docker ({'local' if p.local else 'remote'} engine at {host})",
        f"job:       {request.name} (kind {request.kind})",
        f"container: {p.name}",
        f"image:     {p.image}",
        f"command:   {shlex.join(c['command'])}",
        f"user:      {c.get('user') or 'the image USER'}",
        f"workdir:   {c.get('working_dir') or 'the image WORKDIR'}",
        f"outputs:   {p.out_in_container}" + ("" if p.local else f" (copied back to {request.output_dir} at the end)")
        + (f"; on the host at {p.outputs_on_host}" if p.outputs_on_host else ""),
        f"gpus:      {gpus}",
        f"shm:       {c['shm_size']} bytes" + (f"; memory limit {c['mem_limit']} bytes" if "mem_limit" in c else "")
        + (f"; cpus {c['nano_cpus'] / 1e9:g}" if "nano_cpus" in c else ""),
        "limits:    " + (f"stopped after {request.deadline_s} s of running (timeout(1) in the container): "
                         + (f"the budget, ${request.max_cost:g} at ${request.price_per_hour:g}/h"
                            if request.budget_first else "limits.max_runtime")
                         if request.deadline_s else "none"),
        "mounts:", *mounts,
        "labels:", *(f"  {k}={v}" for k, v in sorted(c["labels"].items())),
        "env:", *(f"  {k}={v}" for k, v in sorted(env.items())),
    ]
    return "\n".join(lines)
