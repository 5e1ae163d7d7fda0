"""`gpujob image build`: build the job image from images/Dockerfile, and push it."""

from __future__ import annotations

import json
from typing import Annotated, List, Literal, Optional

import typer

from gpujob import image
from gpujob.cli.common import JsonOpt, err, friendly
from gpujob.errors import UserError

image_app = typer.Typer(help="The job image every job runs in: build it, push it.", no_args_is_help=True)

VariantOpt = Annotated[
    Literal["cuda", "cpu"],
    typer.Option("--variant", metavar="cuda|cpu", help="cuda: ubuntu:24.04 with torch's CUDA 13 wheels (they bring the CUDA libraries). cpu: CPU torch (tests, CPU-only jobs)."),
]
TagOpt = Annotated[
    Optional[str],
    typer.Option("--tag", "-t", metavar="IMAGE", help="Image name [default: ghcr.io/gpujob/gpujob:VERSION, with -cpu for cpu]."),
]
BaseOpt = Annotated[Optional[str], typer.Option("--base-image", metavar="IMAGE", help="Build FROM this image instead.")]
BuildArgOpt = Annotated[
    Optional[List[str]],
    typer.Option("--build-arg", metavar="KEY=VALUE", help="A Dockerfile build argument (repeatable)."),
]
NetworkOpt = Annotated[Optional[str], typer.Option("--network", metavar="NETWORK", help="Network of the RUN steps, e.g. host.")]
PushOpt = Annotated[
    Optional[str],
    typer.Option("--push", metavar="REGISTRY", help="Then push it as REGISTRY/gpujob:TAG, e.g. ghcr.io/you."),
]


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")
    image_app.command("build")(friendly(build))


def build(variant: VariantOpt = "cuda", tag: TagOpt = None, base_image: BaseOpt = None,
          build_arg: BuildArgOpt = None, network: NetworkOpt = None, push: PushOpt = None,
          as_json: JsonOpt = False) -> None:
    """Build the job image (images/Dockerfile, the repository as context) on the engine at DOCKER_HOST."""
    built = image.build(variant, tag, base_image=base_image, build_args=_key_values(build_arg or []),
                        network_mode=network, push=push, on_line=err if as_json else typer.echo)
    if as_json:  # the build's lines went to stderr
        typer.echo(json.dumps({"tag": built.tag, "image_id": built.image_id, "pushed": built.pushed}))
        return
    typer.echo(f"built {built.tag} ({built.image_id.removeprefix('sha256:')[:12]})")
    if built.pushed:
        typer.echo(f"pushed {built.pushed}")
    gpus = " --gpus all" if variant == "cuda" else ""
    typer.echo(f"next: docker run --rm{gpus} {built.pushed or built.tag}   "
               "(prints the gpujob and torch versions and whether CUDA works)")


def _key_values(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--build-arg {item!r}: expected KEY=VALUE",
                            hint="e.g. --build-arg PIP_EXTRA_INDEX_URL=https://mirror.example/simple")
        pairs[key] = value
    return pairs
