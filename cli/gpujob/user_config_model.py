"""The strict model of ``$GPUJOB_HOME/config.yaml`` (pydantic: imported only when there is a file or a
variable to check; :mod:`gpujob.user_config` reads it)."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")           # a Kubernetes namespace (DNS label)
_BUCKET = re.compile(r"^(s3|gs|gcs|az|abfs|abfss)://[^/\s]+(/\S*)?$")


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    backend: Optional[Literal["local", "docker", "kubernetes", "host"]] = None
    context: Optional[str] = None
    namespace: Optional[str] = None
    image: Optional[str] = None
    stage: Optional[str] = None

    @field_validator("context", "image")
    @classmethod
    def _one_word(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError(f"{value!r} must be one word, without spaces")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (len(value) > 63 or not _NAME.match(value)):
            raise ValueError(f"{value!r} is not a Kubernetes namespace (lowercase letters, digits and -, at most 63)")
        return value

    @field_validator("stage")
    @classmethod
    def _stage(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _BUCKET.match(value):
            raise ValueError(f"{value!r} is not a bucket URI (s3://, gs://, az:// or abfs://BUCKET/PREFIX)")
        return value


def validated(data: dict) -> tuple[list[str], dict]:
    """(``key: message`` for each problem, the values set) of ``data`` checked by :class:`ConfigModel`."""
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as exc:
        return [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()], {}
    return [], {k: v for k, v in model.model_dump().items() if k in data and v is not None}
