"""The job image's names: its repository, its variants, and the tag a job runs when its spec names none.

A leaf: it imports nothing of gpujob but the version, so that the backends (which run the image) and
:mod:`gpujob.image` (which builds it, through the docker backend's engine) both take the names from here.
"""

from __future__ import annotations

from gpujob import __version__

REPOSITORY = "ghcr.io/gpujob/gpujob"
VARIANTS = ("cuda", "cpu")


def default_tag(variant: str = "cuda") -> str:
    """``ghcr.io/gpujob/gpujob:<version>`` for cuda, ``...:<version>-cpu`` for cpu."""
    return f"{REPOSITORY}:{__version__}" + ("-cpu" if variant == "cpu" else "")


def default_image(gpus: int) -> str:
    """The image a job runs in when its spec names none: the CUDA one when it asks for GPUs."""
    return default_tag("cuda" if gpus > 0 else "cpu")
