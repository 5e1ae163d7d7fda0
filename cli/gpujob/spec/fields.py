"""Shared pieces of the spec models: name patterns, upper bounds, secret and credential detection,
and the annotated field types and validators the sections use (durations, sizes, CPUs, variable names).

Custom checks raise :func:`fail` errors (``PydanticCustomError("gpujob", ...)``), whose message the loader
shows verbatim.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from .units import MAX_CPU, parse_cpu, parse_duration, parse_quantity, shown

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
HUB_REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
SECRET_NAME_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "ACCESS_KEY",
                     "PRIVATE_KEY", "CREDENTIAL")
CREDENTIAL_PATTERNS = tuple(re.compile(p) for p in (
    r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}",
    r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{20,}",
    r"(?<![A-Za-z0-9])AKIA[0-9A-Z]{16}",
    r"(?<![A-Za-z0-9])ghp_[A-Za-z0-9]{30,}",
    r"(?<![A-Za-z0-9])xox[bp]-[A-Za-z0-9-]{10,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
))

# Upper bounds. Every number in the spec has one (tests/spec/test_spec_bounds.py checks), so that no value,
# however large, gets past validation to a backend (a GPU count of 10**400, a deadline of 8.6e27 s).
MAX_GPUS = 64  # per node
MAX_STEPS = 1_000_000_000  # optimizer steps (warm-up, evaluation and checkpoint intervals too)
MAX_EPOCHS = 100_000
MAX_BATCH = 4096  # examples per GPU per pass; also the most gradient accumulation steps
MAX_CHECKPOINTS = 1000
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_WEIGHT = 1_000_000
MAX_LEARNING_RATE = 1.0
MAX_ENCODER_LAYERS = 64  # Whisper large has 32
MAX_COST = 1_000_000  # USD
MAX_PRICE = 100_000  # USD per hour
MAX_PRIORITY = 1000
MAX_IDLE_MINUTES = 30 * 24 * 60  # 30 days, the longest duration allowed (units.MAX_DURATION)


def fail(message: str) -> PydanticCustomError:
    """An error whose message the loader shows as-is (no template formatting)."""
    return PydanticCustomError("gpujob", "{message}", {"message": message})


def looks_secret_name(name: str) -> bool:
    """True for variable names like HF_TOKEN, DB_PASSWORD, OPENAI_API_KEY."""
    upper = name.upper()
    return any(word in upper for word in SECRET_NAME_WORDS)


def looks_like_credential(text: str) -> bool:
    """True when ``text`` contains something shaped like a real token or private key."""
    return any(p.search(text) for p in CREDENTIAL_PATTERNS)


def whole_or_auto(value: Any, low: int, high: int | None = None) -> Any:
    """A whole number from ``low`` (to ``high``) or the word auto; else a message that says which."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise fail(f'expected a whole number {span} or "auto", got {describe_value(value)}')
    return value


def describe_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value[:40]}"' if not looks_like_credential(value) else "a value that looks like a credential"
    return type(value).__name__ if isinstance(value, (list, dict)) else shown(value)


def no_duplicates(value: list[str]) -> list[str]:
    dupes = sorted({item for item in value if value.count(item) > 1})
    if dupes:
        raise fail(f'lists {", ".join(dupes)} more than once')
    return value


def _no_unit_number(value: Any, kind: str, example: str) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise fail(f"{shown(value)} has no unit; {kind} need one, e.g. {example}")
    return value


def _checked_by(parse: Callable[[str], Any], kind: str, example: str) -> Callable[[Any], Any]:
    """A before-validator: numbers without a unit are refused; strings must parse."""

    def check(value: Any) -> Any:
        value = _no_unit_number(value, kind, example)
        if isinstance(value, str):
            try:
                parse(value)
            except ValueError as exc:
                raise fail(str(exc)) from None
        return value

    return check


_check_duration = _checked_by(parse_duration, "durations", "90m, 12h, 1h30m, 2d or 45s")
_check_quantity = _checked_by(parse_quantity, "sizes", "32Gi, 16G or 512Mi")


def check_cpu(value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse_cpu(value)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _check_env_key(name: str) -> str:
    if not re.match(ENV_NAME_PATTERN, name):
        raise fail("is not a valid environment variable name (letters, digits and _, not starting with a digit)")
    if looks_secret_name(name):
        raise fail(f"looks like a secret; don't put its value in the spec — list the name under "
                   f"runtime.secrets: [{name}] and export it in your shell")
    return name


def _check_secret_name(value: Any) -> Any:
    hint = ("only names are allowed here: list the environment variable's name (e.g. HF_TOKEN) "
            "and export its value in your shell")
    if isinstance(value, dict):
        raise fail(f"got a mapping; {hint}")
    if isinstance(value, str) and not re.match(ENV_NAME_PATTERN, value):
        raise fail(f"this is not a variable name; {hint}")
    return value


def none_to_empty(factory: type) -> BeforeValidator:
    return BeforeValidator(lambda v: factory() if v is None else v)


Duration = Annotated[str, BeforeValidator(_check_duration)]
Quantity = Annotated[str, BeforeValidator(_check_quantity)]
EnvName = Annotated[str, AfterValidator(_check_env_key)]
SecretName = Annotated[str, Field(pattern=ENV_NAME_PATTERN), BeforeValidator(_check_secret_name)]
NonEmptyStr = Annotated[str, Field(min_length=1)]

CPU_SCHEMA = {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CPU},
                        {"type": "string", "pattern": r"^[0-9]+m$|^[0-9]+(\.[0-9]+)?$"}, {"type": "null"}]}
QUANTITY_SCHEMA = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)$"}
DURATION_SCHEMA = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?[dhms])+$"}  # JSON Schema of a Duration


class Section(BaseModel):
    """A section of the spec: strict types, no keys beyond its fields, no inf or NaN."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
