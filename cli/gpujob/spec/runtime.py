"""The spec's ``runtime`` section: one model per backend, chosen by ``runtime.backend`` (``local`` when unset).

Each backend's model holds only the settings that backend uses, so a spec that sets another backend's
key (``namespace`` on a local job) is refused instead of being ignored. :data:`Runtime` is the union
the job spec uses; :data:`RUNTIMES` maps each backend name to its model.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union
from collections.abc import Mapping

from pydantic import ConfigDict, Discriminator, Field, Tag, WithJsonSchema, field_validator

from gpujob.defaults import HF_CACHE, HOST_IDLE, HOST_MAX_LIFETIME
from gpujob.storage.uri import is_uri, uri_problem

from .fields import DURATION_SCHEMA, ENV_NAME_PATTERN, NAME_PATTERN, Duration, EnvName, NonEmptyStr, SecretName, Section, \
    no_duplicates, none_to_empty

DEFAULT_BACKEND = "local"
# In the JSON Schema, every backend but local must be named, so that an editor matches a runtime section
# against exactly one backend's settings (oneOf), as the loader does.
_NAMED = ConfigDict(json_schema_extra={"required": ["backend"]})


class RuntimeBase(Section):
    """Where and how the job runs: the backend, and the environment every backend passes to the job."""

    backend: Literal["local", "docker", "kubernetes", "host"] = Field(DEFAULT_BACKEND, description=(
        "`local`: a process on this machine; `docker`: a container here; `kubernetes`: a Job in a cluster; "
        "`host`: a remote GPU host. Each backend has its own settings, listed below; a spec may set only "
        "those of its backend."))
    env: Annotated[dict[EnvName, str], none_to_empty(dict)] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": ENV_NAME_PATTERN}}, description=(
        "Environment variables for the job. Values are strings: quote numbers and booleans (`PORT: \"8080\"`). "
        "Never put secrets here; use `secrets`."))
    secrets: Annotated[list[SecretName], none_to_empty(list)] = Field(default_factory=list, description=(
        "Names of environment variables (e.g. `HF_TOKEN`) passed from your shell to the job. Names only, never values."))

    _unique = field_validator("secrets")(classmethod(lambda cls, value: no_duplicates(value)))

    # True: the backend runs a job on several machines (resources.nodes above 1); the others run it on one.
    multi_node: ClassVar[bool] = False

    @classmethod
    def cross_field(cls, runtime: Mapping[str, Any], resources: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        """What this backend's settings need of the rest of the spec, on plain (possibly invalid) data:
        (key path, message) pairs for :func:`gpujob.spec.cross_field.cross_field_problems`."""
        return []


class LocalRuntime(RuntimeBase):
    """`backend: local`: a process on this machine. No settings beyond `env` and `secrets`."""

    backend: Literal["local"] = Field("local", description="A process on this machine (the default).")


class DockerRuntime(RuntimeBase):
    """`backend: docker`: a container on this machine's Docker engine (or the one DOCKER_HOST names)."""

    model_config = _NAMED

    backend: Literal["docker"] = Field("docker", description="A container on a Docker engine.")
    image: NonEmptyStr | None = Field(None, description=(
        "Container image. Default: the gpujob runner image (its CUDA tag with GPUs, its -cpu tag without)."))


class KubernetesRuntime(RuntimeBase):
    """`backend: kubernetes`: a Job in a cluster."""

    model_config = _NAMED

    backend: Literal["kubernetes"] = Field("kubernetes", description="A Job in a Kubernetes cluster.")
    multi_node: ClassVar[bool] = True  # an indexed Job: one pod per node
    image: NonEmptyStr | None = Field(None, description="Container image. Default: the gpujob runner image.")
    namespace: NonEmptyStr | None = Field(None, description="Kubernetes namespace. Default: the current context's.")
    context: NonEmptyStr | None = Field(None, description=(
        "The kubeconfig context to submit to. Default: the current one. Later commands on the job "
        "use the cluster it was submitted to, whatever the current context is then."))
    queue: NonEmptyStr | None = Field(None, description="Kueue LocalQueue to submit the Job to; it is created suspended.")
    cache_pvc: NonEmptyStr = Field(HF_CACHE, description=(
        "PersistentVolumeClaim mounted at /cache for the Hugging Face cache and relative outputs "
        f"(k8s/ creates `{HF_CACHE}`)."))
    secret_store: NonEmptyStr = Field("gpujob-secrets", description=(
        "The Secret whose keys, named like `secrets`, hold their values (k8s/secret-example.yaml)."))
    gpu_node_label: NonEmptyStr = Field("nvidia.com/gpu.product", description=(
        "Node label that `resources.gpu_type` is matched against (GPU feature discovery sets this one)."))
    stage: NonEmptyStr | None = Field(None, description=(
        "A bucket prefix (`s3://team-bucket/gpujob`, `gs://…`, `az://…`) that local folders the spec names are "
        "uploaded to at submit, by content, under `<stage>/data/<sha256>/`; the job reads them from there "
        "(the bucket's keys in `runtime.secrets` and in your environment). Unset: onto `cache_pvc` through a "
        "short-lived transfer pod."))

    @field_validator("stage")
    @classmethod
    def _stage_is_a_bucket(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = uri_problem(value.strip())
        if problem or not is_uri(value.strip()):
            raise ValueError(problem or f"{value!r} is not a bucket URI: write s3://bucket/prefix, gs://… or az://…")
        return value.strip().rstrip("/")


class HostRuntime(RuntimeBase):
    """`backend: host`: a container on a rented GPU host, reused or launched for the job."""

    model_config = _NAMED

    backend: Literal["host"] = Field("host", description="A container on a rented GPU host.")
    image: NonEmptyStr | None = Field(None, description=(
        "Container image. The host pulls it, else it is copied from this machine's Docker engine. "
        "Default: the gpujob runner image."))
    host: Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)] | None = Field(None, description=(
        "Run on this rented host (a name from `gpujob host list`). Unset: reuse an idle host of "
        "`host_type`, else launch one; with neither, the cheapest type with `resources.gpu_type` GPUs "
        "that has capacity (an idle host of yours that fits first)."))
    host_type: NonEmptyStr | None = Field(None, description=(
        "The instance type to reuse or launch when `host` is unset, e.g. `gpu_1x_a100_sxm4` "
        "(`gpujob host types` lists them with prices and the regions that have capacity)."))
    region: NonEmptyStr | None = Field(None, description=(
        "Region to launch in, e.g. `us-east-1`; also the only region a host chosen for `resources.gpu_type` "
        "may be in. Unset: the first region with capacity."))
    filesystem: NonEmptyStr | None = Field(None, description=(
        "Persistent file system to attach to a launched host; outputs are written to it, so they "
        "outlive the host."))
    host_idle: Annotated[Duration, WithJsonSchema(DURATION_SCHEMA)] = Field(
        HOST_IDLE, description="A host launched for this job terminates itself after being idle this long.")
    host_max_lifetime: Annotated[Duration, WithJsonSchema(DURATION_SCHEMA)] = Field(
        HOST_MAX_LIFETIME, description="A host launched for this job is terminated this long after launch, busy or not.")

    @classmethod
    def cross_field(cls, runtime: Mapping[str, Any], resources: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        if runtime.get("host") or runtime.get("host_type") or resources.get("gpu_type"):
            return []
        return [(("runtime", "host"), "runtime.backend: host needs runtime.host (a host from `gpujob host up`), "
                                      "runtime.host_type (an instance type to reuse or launch, e.g. gpu_1x_a10) "
                                      "or resources.gpu_type (the cheapest type with that GPU is chosen)")]


RUNTIMES: dict[str, type[RuntimeBase]] = {
    "local": LocalRuntime, "docker": DockerRuntime, "kubernetes": KubernetesRuntime, "host": HostRuntime,
}


def backend_of(value: Any) -> str | None:
    """The backend a runtime section is for: its ``backend`` key (``local`` when absent); None when
    ``value`` is not a mapping or its backend is not a string (the loader says what is wrong)."""
    if isinstance(value, RuntimeBase):
        return value.backend
    if isinstance(value, dict):
        backend = value.get("backend", DEFAULT_BACKEND)
        return backend if isinstance(backend, str) else None
    return None


Runtime = Annotated[
    Union[
        Annotated[LocalRuntime, Tag("local")],
        Annotated[DockerRuntime, Tag("docker")],
        Annotated[KubernetesRuntime, Tag("kubernetes")],
        Annotated[HostRuntime, Tag("host")],
    ],
    Discriminator(backend_of),
]


def owners(key: str) -> list[str]:
    """The backends whose runtime has ``key`` (every backend for ``env``, ``secrets`` and ``backend``)."""
    return [name for name, model in RUNTIMES.items() if key in model.model_fields]


def foreign_keys(runtime: dict[str, Any], backend: str) -> dict[str, list[str]]:
    """Keys of ``runtime`` that belong to other backends but not to ``backend``, each with its owners.
    Keys no backend has are left out: they are plain unknown keys."""
    model = RUNTIMES.get(backend)
    if model is None:
        return {}
    return {key: owners(key) for key in runtime
            if isinstance(key, str) and key not in model.model_fields and owners(key)}


def foreign_message(key: str, backends: list[str], backend: str) -> str:
    """``runtime.host_type`` on a local spec -> a message that says whose setting it is and the fixes."""
    fix = f"set runtime.backend: {backends[0]}" if len(backends) == 1 else \
        f"set runtime.backend to one of {', '.join(backends)}"
    return f"a setting of the {backend_names(backends)}; this spec runs on {backend} (remove it, or {fix})"


def dropped_notice(dropped: dict[str, list[str]], backend: str) -> str:
    """One line naming the keys ``--backend`` dropped, grouped by the backends they belong to."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, backends in dropped.items():
        groups.setdefault(tuple(backends), []).append(f"runtime.{key}")
    parts = []
    for backends, keys in groups.items():
        verb = "is a setting" if len(keys) == 1 else "are settings"
        parts.append(f"{', '.join(keys)} {verb} of the {backend_names(list(backends))}")
    return f"{'; '.join(parts)}, not used on {backend}"


def backend_names(names: list[str]) -> str:
    """["host"] -> "host backend"; ["docker", "kubernetes", "host"] -> "docker, kubernetes and host backends"."""
    if len(names) == 1:
        return f"{names[0]} backend"
    return f"{', '.join(names[:-1])} and {names[-1]} backends"


# The user's defaults (``$GPUJOB_HOME/config.yaml``) that apply to a runtime key, by backend.
DEFAULT_APPLIES_TO = {"context": ("kubernetes",), "namespace": ("kubernetes",),
                      "image": ("docker", "kubernetes", "host")}


def fill_defaults(data: dict, defaults: Mapping[str, str], backend: str | None) -> None:
    """Fill the user's defaults into a spec's raw ``data`` where it is silent: ``backend`` where the spec
    names none (and no --backend is given), then the runtime keys of the backend the job runs on."""
    runtime = data.get("runtime", {})
    if not isinstance(runtime, dict):
        return  # the spec's own problem, said by validation
    filled = dict(runtime)
    if backend is None and "backend" not in filled and defaults.get("backend"):
        filled["backend"] = defaults["backend"]
    runs_on = backend or filled.get("backend") or "local"
    for key, backends in DEFAULT_APPLIES_TO.items():
        if defaults.get(key) and runs_on in backends and key not in filled:
            filled[key] = defaults[key]
    if filled != runtime:
        data["runtime"] = filled
