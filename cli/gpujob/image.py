"""`gpujob image build`: the job image built from images/Dockerfile through the Docker SDK, and pushed.

Its names (repository, variants, the default tag) are :mod:`gpujob.image_names`, a leaf the backends
take a job's default image from; this module sits above the backends (it reaches the engine as the
docker backend does). The Docker SDK is imported only to build or push.
A build streams every line of the engine's output to ``on_line`` and turns an engine error into a
:class:`~gpujob.errors.UserError` that names the failing step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from gpujob import __version__
from gpujob.backends.docker.engine import current_host
from gpujob.errors import UserError
from gpujob.image_names import VARIANTS, default_tag

DOCKERFILE = "images/Dockerfile"   # relative to the build context, the repository root
# Both variants build on a plain Ubuntu (Python 3.12): the cuda variant's CUDA libraries come with
# torch's PyPI wheels (images/Dockerfile), so a CUDA base would only add 3 GB that nothing loads.
CPU_BASE_IMAGE = "ubuntu:24.04"
CLIENT_TIMEOUT_S = 300              # pushes of multi-GB layers go quiet for a while



@dataclass
class Built:
    image_id: str
    tag: str
    pushed: str | None = None   # REGISTRY/gpujob:TAG, when pushed


def build(variant: str = "cuda", tag: str | None = None, *, base_image: str | None = None,
          build_args: Mapping[str, str] | None = None, network_mode: str | None = None,
          push: str | None = None, on_line: Callable[[str], None] = print,
          context: str | Path | None = None, docker_host: str | None = None, client: Any = None) -> Built:
    """Build images/Dockerfile as ``tag`` (default :func:`default_tag`), and push it with ``push``.

    ``client`` (a docker.DockerClient) or ``docker_host`` picks the engine; else DOCKER_HOST.
    ``build_args`` go on top of VARIANT, GPUJOB_VERSION and BASE_IMAGE (from ``base_image``).
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown image variant {variant!r}", hint=f"use one of: {', '.join(VARIANTS)}")
    if push is not None:
        _check_registry(push)
    tag = tag or default_tag(variant)
    if base_image is None and variant == "cpu":
        base_image = CPU_BASE_IMAGE
    root = find_context(context)
    client = client or connect(docker_host)
    args = {"VARIANT": variant, "GPUJOB_VERSION": __version__,
            **({"BASE_IMAGE": base_image} if base_image else {}), **(build_args or {})}
    from docker.errors import DockerException

    try:
        chunks = client.api.build(path=str(root), dockerfile=DOCKERFILE, tag=tag, buildargs=args,
                                  network_mode=network_mode, rm=True, forcerm=True, decode=True)
        image_id = _follow_build(chunks, on_line, args)
    except DockerException as exc:  # refused before a step ran: a bad tag, a bad argument
        raise UserError(f"cannot build {tag}: {getattr(exc, 'explanation', None) or exc}") from None
    built = Built(image_id=image_id or client.images.get(tag).id, tag=tag)
    if push is not None:
        built.pushed = push_image(client, tag, push, on_line)
    return built


def find_context(given: str | Path | None = None) -> Path:
    """The build context: ``given``, else the checkout gpujob runs from, else the current directory."""
    candidates = [Path(given)] if given else [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / DOCKERFILE).is_file():
            return root
    raise UserError(f"{DOCKERFILE} is not in {' or '.join(str(c) for c in candidates)}",
                    hint="build from a clone of the gpujob repository: the build context is its root")


def connect(docker_host: str | None = None):
    """A docker.DockerClient for ``docker_host`` (else DOCKER_HOST), checked with a ping."""
    try:
        import docker
    except ImportError:
        raise UserError("building the job image needs the Docker SDK",
                        hint="pip install 'gpujob[docker]'") from None
    host = docker_host or current_host()
    try:
        client = docker.DockerClient(base_url=host, timeout=CLIENT_TIMEOUT_S)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise UserError(f"no Docker engine answers at DOCKER_HOST={host} ({exc})",
                        hint="start one (`sudo systemctl start docker`, or `sudo dockerd &`), or set "
                             "DOCKER_HOST to an engine that runs (unix:///path/docker.sock, ssh://user@host)") from None
    return client


def push_image(client, tag: str, registry: str, on_line: Callable[[str], None]) -> str:
    """Tag ``tag`` as REGISTRY/gpujob:TAG, push it, and return that name."""
    from docker.errors import APIError

    _check_registry(registry)
    name = f"{registry.rstrip('/')}/gpujob:{_tag_part(tag)}"
    repository, _, version = name.rpartition(":")
    host = registry.split("/")[0]
    hint = f"check that {host} is reachable from the Docker engine and that you are logged in (docker login {host})"
    try:
        client.api.tag(tag, repository, version)
        seen: dict[str, str] = {}
        for chunk in client.api.push(repository, tag=version, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                raise UserError(f"pushing {name} failed: {_error_text(chunk)}", hint=hint)
            for line in _lines(chunk, seen):
                on_line(line)
    except APIError as exc:
        raise UserError(f"pushing {name} failed: {exc.explanation or exc}", hint=hint) from None
    return name


def _follow_build(chunks: Iterable[dict], on_line: Callable[[str], None],
                  args: Mapping[str, str]) -> str | None:
    """Show the build's output; return the image id; raise a UserError quoting the failing step,
    with the build arguments filled in (``FROM ${BASE_IMAGE}`` names the image)."""
    step, image_id, seen = None, None, {}
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            where = f" at {_shorten(_fill(step, args))}" if step else ""
            raise UserError(f"the image build failed{where}:\n  {_error_text(chunk)}",
                            hint="the lines above are that step's output")
        for line in _lines(chunk, seen):
            if line.startswith("Step "):
                step = line
            on_line(line)
        image_id = (chunk.get("aux") or {}).get("ID", image_id)
    return image_id


def _lines(chunk: dict, seen: dict[str, str]) -> list[str]:
    """Printable lines of one stream chunk. A layer's pull/push status is shown when it changes,
    not at every progress tick."""
    if chunk.get("stream"):
        return [line for line in chunk["stream"].splitlines() if line.strip()]
    status = chunk.get("status")
    if not status:
        return []
    layer = chunk.get("id")
    if layer is None:
        return [status]
    if seen.get(layer) == status:
        return []
    seen[layer] = status
    return [f"{layer}: {status}"]


def _error_text(chunk: dict) -> str:
    return str((chunk.get("errorDetail") or {}).get("message") or chunk.get("error") or chunk).strip()


def _fill(text: str, args: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), text)


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tag_part(name: str) -> str:
    """``v1`` of ``host:5000/repo:v1``; ``latest`` when the name has no tag."""
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def _check_registry(registry: str) -> None:
    path = registry.split("/", 1)[1] if "/" in registry else ""   # after the host (which may have a :port)
    if not registry.strip("/") or "://" in registry or ":" in path or "@" in registry:
        raise UserError(f"--push {registry!r}: expected a registry and optional path, like ghcr.io/you",
                        hint="the image is pushed as REGISTRY/gpujob:TAG")
