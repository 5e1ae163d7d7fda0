"""gpujob: one YAML job spec in, a running GPU job and live progress out.

Kept import-free on purpose: `gpujob --help` must stay instant, so nothing
heavy (pydantic, torch, kubernetes, docker) is imported at package level.
"""

__version__ = "0.1.0"
