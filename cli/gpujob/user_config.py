"""The user's defaults: ``$GPUJOB_HOME/config.yaml``, each key overridable by an environment variable.

    backend: kubernetes          # GPUJOB_BACKEND      runtime.backend where a spec names none
    context: gpu-cluster         # GPUJOB_CONTEXT      runtime.context of kubernetes jobs that name none
    namespace: ml-team           # GPUJOB_NAMESPACE    runtime.namespace of kubernetes jobs that name none
    image: registry.example/gpujob:0.1.0   # GPUJOB_IMAGE  runtime.image of container jobs that name none
    stage: s3://ml-team/gpujob   # GPUJOB_STAGE        where local data is staged for remote jobs

What wins, lowest first: gpujob's default, config.yaml, the environment variable, the spec, ``--set``,
``--backend``. The file is strict (an unknown key or a wrong type is an error naming the key) and read
only by the commands that load a spec and by ``gpujob config``; where neither the file nor any of the
variables exists, nothing is imported (``gpujob --help`` and ``list`` never read it).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpujob.errors import UserError
from gpujob.records import gpujob_home

FILE_NAME = "config.yaml"
KEYS = {  # key: (environment variable, what it sets)
    "backend": ("GPUJOB_BACKEND", "runtime.backend where a spec names none"),
    "context": ("GPUJOB_CONTEXT", "runtime.context (kubeconfig context) of kubernetes jobs that name none"),
    "namespace": ("GPUJOB_NAMESPACE", "runtime.namespace of kubernetes jobs that name none"),
    "image": ("GPUJOB_IMAGE", "runtime.image of docker, kubernetes and host jobs that name none"),
    "stage": ("GPUJOB_STAGE", "where local data is staged for remote jobs (a bucket URI, e.g. s3://team/gpujob)"),
}


def config_path() -> Path:
    return gpujob_home() / FILE_NAME


@dataclass
class UserConfig:
    values: dict[str, Any] = field(default_factory=dict)    # key -> value (only the keys set somewhere)
    sources: dict[str, str] = field(default_factory=dict)   # key -> where it came from, in words

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def spec_defaults(self) -> dict[str, str]:
        """What the spec loader fills in where a spec is silent (backend, context, namespace, image)."""
        return {k: v for k, v in self.values.items() if k in ("backend", "context", "namespace", "image")}


def load(environ: os._Environ | dict | None = None) -> UserConfig:
    """The defaults from config.yaml and the environment; a UserError naming the file and key when the
    file is not valid. Makes nothing (no $GPUJOB_HOME)."""
    environ = os.environ if environ is None else environ
    path = config_path()
    found = UserConfig()
    if path.is_file():
        for key, value in _read(path).items():
            found.values[key], found.sources[key] = value, str(path)
    for key, (var, _) in KEYS.items():
        raw = environ.get(var, "").strip()
        if raw:
            found.values[key], found.sources[key] = _validated({key: raw}, f"${var}")[key], f"${var}"
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})",
                        hint=f"fix or remove {path}") from None
    if len(text) > 64 * 1024:
        raise UserError(f"{path}: {len(text):,} characters is too large for gpujob's config file",
                        hint=f"it holds a few defaults ({', '.join(KEYS)}); see `gpujob config`")
    from gpujob.spec import SpecError
    from gpujob.spec.errors import Fatal
    from gpujob.spec.yaml_bounded import parse_yaml

    try:
        data = parse_yaml(text, str(path))
    except (SpecError, Fatal) as exc:
        problems = exc.problems if isinstance(exc, SpecError) else [exc.problem]
        raise UserError("\n".join(str(p) for p in problems), hint=f"fix {path} (YAML), or remove it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of keys ({', '.join(KEYS)})", hint="e.g. backend: kubernetes")
    return _validated(dict(data), str(path))


def _validated(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` checked by the strict model; a UserError with one ``where: key: message`` line per problem."""
    from gpujob.user_config_model import validated

    unknown = [k for k in data if k not in KEYS]
    if unknown:
        lines = []
        for k in unknown:
            guess = difflib.get_close_matches(str(k), KEYS, n=1)
            lines.append(f"{where}: {k}: not a config key" + (f"; did you mean {guess[0]}?" if guess else ""))
        raise UserError("\n".join(lines), hint=f"the keys are: {', '.join(KEYS)}")
    problems, values = validated(data)
    if problems:
        raise UserError("\n".join(f"{where}: {line}" for line in problems),
                        hint="`gpujob config --help` says what each key takes")
    return values
