"""Load a job spec: bytes -> YAML 1.2 -> plain data with positions -> ``${VAR}`` -> ``--set`` -> JobSpec.

Every failure caused by user input becomes a :class:`SpecError` listing all problems found,
each with file, line, column and the YAML key path. The steps have their own modules: bounded YAML
reading (:mod:`.yaml_bounded`), plain data with positions (:mod:`.plain`) and ``${VAR}`` (:mod:`.interpolate`);
this one runs them in order, applies the ``--set`` overrides and refuses credentials.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gpujob.redact import Redactor

from .cross_field import cross_field_problems
from .errors import Fatal, Path_, Problem, SpecError, fmt_path, translate_errors
from .fields import looks_like_credential
from .interpolate import interpolate
from .limits import MAX_BYTES, MAX_DEPTH, MAX_FLOW_DEPTH, MAX_LINES
from .models import JobSpec
from .plain import SET, SURROGATE_MSG, Converter, huge_message, problem_at, replace_at, unusable_values
from .runtime import backend_of, dropped_notice, fill_defaults, foreign_keys
from .yaml_bounded import Huge, YamlProblems, new_yaml, parse_yaml

__all__ = ["Problem", "SpecError", "LoadedSpec", "load_spec", "load_spec_text"]

_QUOTED_OR_COMMENT = re.compile(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|(?:^|(?<=\s))#.*""", re.MULTILINE)
_CREDENTIAL_MSG = ("looks like a credential (an access token or private key); don't put secrets in the spec — "
                   "list the variable's name under runtime.secrets and export it in your shell")
_SECRET_VALUE_MSG = ("holds the value of {name} ({where}); gpujob keeps and shows the spec, so a secret never goes "
                     "in it — the job gets {name} as an environment variable: read it there "
                     "(command: [sh, -c, 'tool --token \"${name}\"'])")


@dataclass
class LoadedSpec:
    """A validated spec, where it came from, its warnings, its plain data (defaults filled in) and
    notes on what loading changed (the settings ``backend`` dropped)."""

    spec: JobSpec
    path: str
    warnings: list[Problem] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = (),
              env: Mapping[str, str] | None = None, backend: str | None = None,
              defaults: Mapping[str, str] | None = None) -> LoadedSpec:
    """Read and validate the job spec at ``path``; raise :class:`SpecError` on any problem.
    ``backend`` (``--backend``) runs the spec on another backend: see :func:`load_spec_text`.
    ``defaults``: the user's (config.yaml): runtime keys filled in where the spec is silent."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
            size = max(len(raw), os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, IsADirectoryError):
            reason = "is a directory, not a YAML file"
        raise SpecError([Problem(file, None, None, "", f"cannot read the job spec: {reason}")]) from None
    if len(raw) > MAX_BYTES:
        raise SpecError([_too_large(file, size)])
    if b"\x00" in raw:
        raise SpecError([Problem(file, None, None, "", "is not a text YAML file (it contains NUL bytes)")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([Problem(file, line, col, "", f"is not valid UTF-8 (byte offset {exc.start}: "
                                 f"0x{raw[exc.start]:02x}); is this a text YAML file? Save it as UTF-8")]) from None
    return load_spec_text(text, file, overrides, env, backend, defaults)


def load_spec_text(text: str, filename: str = "<string>", overrides: Sequence[str] = (),
                   env: Mapping[str, str] | None = None, backend: str | None = None,
                   defaults: Mapping[str, str] | None = None) -> LoadedSpec:
    """Validate a job spec given as text; ``filename`` is used in messages and for the default name.

    ``backend`` sets ``runtime.backend`` after the ``overrides``. When it differs from the spec's own
    backend, the runtime settings of other backends that it does not have are dropped, and
    ``notes`` names them: a spec written for one backend can be tried on another unchanged."""
    try:
        return _load(text, filename, overrides, os.environ if env is None else env, backend, defaults or {})
    except Fatal as exc:
        raise SpecError([exc.problem]) from None
    except RecursionError:
        raise SpecError([Problem(filename, None, None, "", f"is nested too deeply (more than {MAX_DEPTH} levels)")]) from None


def _too_large(file: str, size: int) -> Problem:
    return Problem(file, None, None, "", f"{size / 1e6:.1f} MB is too large for a job spec (limit 1 MiB) — "
                                         "did you pass a data file?")


def _load(text: str, file: str, overrides: Sequence[str], env: Mapping[str, str],
          backend: str | None, defaults: Mapping[str, str] | None = None) -> LoadedSpec:
    if len(text) > MAX_BYTES // 4 and len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise Fatal(_too_large(file, len(text.encode("utf-8", "replace"))))
    if "\x00" in text:
        raise Fatal(Problem(file, None, None, "", "is not a text YAML file (it contains NUL bytes)"))
    lines = max(text.count("\n"), text.count("\r")) + sum(text.count(c) for c in "\x85\u2028\u2029")
    if lines > MAX_LINES:
        raise Fatal(Problem(file, None, None, "", f"has {lines:,} lines, more than the {MAX_LINES:,} a job spec may "
                                                  "have — did you pass a data file?"))
    text = text.removeprefix("\ufeff")
    brackets = re.sub(r"[^\[\]{}]+", "", _QUOTED_OR_COMMENT.sub("", text))
    if len(brackets) > 2 * MAX_FLOW_DEPTH and max(accumulate(1 if c in "[{" else -1 for c in brackets)) \
            > MAX_FLOW_DEPTH:
        raise Fatal(Problem(file, None, None, "", f"is nested too deeply (more than {MAX_FLOW_DEPTH} levels "
                                                  "of [ or {)"))
    root = parse_yaml(text, file)
    if root is None and _is_blank(text):
        raise Fatal(Problem(file, None, None, "", "is empty; a job spec needs at least apiVersion and kind"))
    if not isinstance(root, dict):
        raise Fatal(Problem(file, 1, 1, "", "top level must be a mapping of keys (apiVersion, kind, ...), "
                                            f"got {_kind_of(root)}"))
    conv = Converter(file)
    data = conv.convert(root, (), 0, frozenset())
    problems, positions = conv.problems, conv.positions
    runtime = data.get("runtime")
    listed = runtime.get("secrets") if isinstance(runtime, dict) else None
    secret_names = {s for s in listed if isinstance(s, str)} if isinstance(listed, list) else set()
    flagged: set[Path_] = set()
    data = interpolate(data, (), env, secret_names, conv.plain, problems, positions, file, flagged, [MAX_BYTES])
    override_paths = _apply_overrides(data, overrides, problems)
    if defaults:
        fill_defaults(data, defaults, backend)
    notes = _switch_backend(data, backend, problems, override_paths) if backend is not None else []
    for path, value in unusable_values(data, ()):
        flagged.add(path)
        message = SURROGATE_MSG if isinstance(value, str) else huge_message(value, path)
        problems.append(problem_at(path, message, file, positions, override_paths))
        replace_at(data, path, Huge(""))  # so that no check below sees (or prints) the value
    for path in _credential_paths(data, ()):
        flagged.add(path)
        problems.append(problem_at(path, _CREDENTIAL_MSG, file, positions, override_paths))
    for path, name, where in _secret_value_paths(data, env):
        if path not in flagged:
            flagged.add(path)
            problems.append(problem_at(path, _SECRET_VALUE_MSG.format(name=name, where=where), file, positions,
                                       override_paths))
    if data.get("name") is None:
        data["name"] = _slug(file)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        found = translate_errors(exc.errors(include_url=False), data)
        problems += [problem_at(p, m, file, positions, override_paths, missing=miss)
                     for p, m, miss in found if not any(p[: len(f)] == f for f in flagged)]
    else:
        if problems:
            raise SpecError(_sorted(problems))
        warnings = _warnings(spec, data, file, positions, override_paths)
        return LoadedSpec(spec, file, warnings, spec.model_dump(mode="json", by_alias=True), notes)
    # pydantic runs the cross-field checks only when every field is valid; run them on the raw data too
    problems += [problem_at(p, m, file, positions, override_paths) for p, m in cross_field_problems(data)]
    raise SpecError(_sorted(problems))


def _sorted(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.file == SET, p.line or 0, p.column or 0, p.key))


def _is_blank(text: str) -> bool:
    return all(not s or s.startswith("#") or s in ("---", "...") for s in (ln.strip() for ln in text.splitlines()))


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    for typ, name in ((list, "a list"), (str, "a string"), (int, "a number"), (float, "a number")):
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _slug(file: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", Path(file).stem.lower()).strip("-")[:53].rstrip("-")
    return slug or "job"


# --- --set overrides ---------------------------------------------------------------------------

def _parse_override_value(text: str) -> tuple[Any, str | None]:
    stripped = text.strip()
    if not stripped:
        return None, None
    try:
        value = new_yaml().load(text)
    except YamlProblems as exc:
        return None, exc.found[0][3]
    except Exception:  # noqa: BLE001
        if stripped[0] in "[{":
            return None, f"{stripped[:40]} is not a valid YAML flow {'list' if stripped[0] == '[' else 'mapping'}"
        return text, None
    if isinstance(value, dict) and stripped[0] != "{" or isinstance(value, list) and stripped[0] != "[":
        return text, None
    conv = Converter(SET)
    try:
        converted = conv.convert(value, (), 0, frozenset())
    except Fatal as exc:
        return None, exc.problem.message
    return converted, conv.problems[0].message if conv.problems else None


def _apply_overrides(data: dict, overrides: Sequence[str], problems: list[Problem]) -> set[Path_]:
    applied: set[Path_] = set()
    for raw in overrides:
        key, eq, text = raw.partition("=")
        key = key.strip()
        if not eq:
            problems.append(Problem(SET, None, None, key or raw, f'"{raw[:60]}" has no "="; write key.path=value, '
                                    "e.g. training.learning_rate=1e-5"))
            continue
        parts = re.sub(r"\[(\d+)\]", r".\1", key).split(".")  # accept data.train[0].weight too
        if not key or any(not p.strip() for p in parts):
            problems.append(Problem(SET, None, None, raw, "has an empty key; write key.path=value, e.g. "
                                    "training.learning_rate=1e-5"))
            continue
        value, error = _parse_override_value(text)
        if error:
            problems.append(Problem(SET, None, None, key, error))
            continue
        cur: Any = data
        path: Path_ = ()
        for i, part in enumerate(parts):
            seg: str | int = part
            if isinstance(cur, list):
                if not re.fullmatch(r"\d+", part):
                    error = f"{fmt_path(path)} is a list; use an index, e.g. {fmt_path(path)}.0"
                elif int(part) >= len(cur):
                    error = f"index {part} is out of range: {fmt_path(path)} has {len(cur)} item(s)"
                seg = int(part) if not error else part
            elif not isinstance(cur, dict):
                error = f"cannot set {key}: {fmt_path(path)} is {_kind_of(cur)}, not a mapping or list"
            if error:
                break
            path += (seg,)
            if i == len(parts) - 1:
                cur[seg] = value
                break
            if isinstance(cur, dict) and cur.get(seg) is None:
                if re.fullmatch(r"\d+", parts[i + 1]):
                    error = (f"{fmt_path(path)} is not set, so it has no item {parts[i + 1]}; set the whole list, "
                             f"e.g. {'.'.join(map(str, path))}=[...]")
                    break
                cur[seg] = {}
                applied.add(path)
            cur = cur[seg]
        if error:
            problems.append(Problem(SET, None, None, key, error))
        else:
            applied.add(path)
    return applied


def _switch_backend(data: dict, backend: str, problems: list[Problem], override_paths: set[Path_]) -> list[str]:
    """``--backend``: set runtime.backend and, if that changes it, drop the settings of other backends
    that this one does not have; return a note naming them."""
    runtime = data.get("runtime")
    declared = backend_of(runtime) if isinstance(runtime, dict) else None
    override_paths |= _apply_overrides(data, [f"runtime.backend={backend}"], problems)
    if not isinstance(runtime, dict) or declared == backend:
        return []
    dropped = foreign_keys(runtime, backend)
    for key in dropped:
        del runtime[key]
    return [dropped_notice(dropped, backend)] if dropped else []


# --- credentials and warnings --------------------------------------------------------------------

def _credential_paths(value: Any, path: Path_) -> list[Path_]:
    if isinstance(value, dict):
        return [p for k, v in value.items()
                for p in ([path + (k,)] if looks_like_credential(k) else _credential_paths(v, path + (k,)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _credential_paths(v, path + (i,))]
    return [path] if isinstance(value, str) and looks_like_credential(value) else []


def _secret_names(data: dict) -> list[tuple[str, str]]:
    """The variables whose values are secrets, as the spec names them (after ``--set``): runtime.secrets
    and notify.webhook_env; each with the key that lists it."""
    runtime, notify = data.get("runtime"), data.get("notify")
    listed = runtime.get("secrets") if isinstance(runtime, dict) else None
    names = [(n, "runtime.secrets") for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
    hook = notify.get("webhook_env") if isinstance(notify, dict) else None
    return names + ([(hook, "notify.webhook_env")] if isinstance(hook, str) else [])


def _secret_value_paths(data: dict, env: Mapping[str, str]) -> list[tuple[Path_, str, str]]:
    """Where the spec holds (in any form the log redactor knows) the value that ``env`` gives a listed
    secret: typed into the file, or given with ``--set``. Each key path once, with the secret's name."""
    found: list[tuple[Path_, str, str]] = []
    for name, where in _secret_names(data):
        value = env.get(name)
        redactor = Redactor([value] if isinstance(value, str) else [])
        if redactor:
            found += [(p, name, where) for p in _paths_where(data, (), redactor) if p not in {f[0] for f in found}]
    return found


def _paths_where(value: Any, path: Path_, redactor: Redactor) -> list[Path_]:
    """The key paths of the strings (keys included) in which ``redactor`` finds something."""
    if isinstance(value, dict):
        return [p for k, v in value.items()
                for p in ([path + (k,)] if isinstance(k, str) and redactor.text(k) != k
                          else _paths_where(v, path + (k,), redactor))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths_where(v, path + (i,), redactor)]
    return [path] if isinstance(value, str) and redactor.text(value) != value else []


def _warnings(spec: JobSpec, data: dict, file: str, positions: dict[Path_, tuple[int, int]],
              override_paths: set[Path_]) -> list[Problem]:
    """Things that are allowed but probably not what the user wants."""
    out: list[tuple[Path_, str]] = []
    if spec.training.dropout > 0.1:
        out.append((("training", "dropout"), "dropout above 0.1 tends to hurt Whisper fine-tuning "
                                             "(it was pre-trained without dropout)"))
    if spec.training.early_stopping_patience and spec.kind == "train" and not spec.data.eval:
        out.append((("training", "early_stopping_patience"), "has no effect without data.eval: early stopping "
                                                             "watches the eval WER"))
    if spec.data.streaming and spec.training.epochs is not None:
        out.append((("training", "epochs"), "with data.streaming: true the dataset size is unknown, so epochs "
                                            "can't be turned into steps; prefer training.max_steps"))
    wandb = spec.tracking.wandb
    if wandb is not None and wandb.mode == "online" and "WANDB_API_KEY" not in spec.runtime.secrets:
        out.append((("tracking", "wandb"), "W&B online needs a key inside the job: add WANDB_API_KEY to "
                                           "runtime.secrets (or set mode: offline); without it W&B is skipped"))
    if spec.kind == "command":
        ignored = [k for k in ("model", "data", "training", "evaluation") if data.get(k)]
        if ignored:
            out.append(((ignored[0],), f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored "
                                       "for kind: command"))
    return [problem_at(p, m, file, positions, override_paths) for p, m in out]
