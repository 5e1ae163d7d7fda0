"""The gpujob job spec: models, YAML loading with precise errors, and generated reference docs."""

from .loader import LoadedSpec, Problem, SpecError, load_spec, load_spec_text
from .models import JobSpec, default_learning_rate
from .reference import json_schema, reference_markdown

__all__ = [
    "JobSpec", "LoadedSpec", "Problem", "SpecError", "default_learning_rate", "json_schema",
    "load_spec", "load_spec_text", "reference_markdown",
]
