"""The runtime section, one model per backend: each backend takes its own settings and refuses another
backend's by name; --backend moves a spec to another backend, leaving out (with a note) the settings the
new one does not have; every backend's runtime survives a dump and a reload.

The (key, backend) cases come from the models, so a setting added to a backend is covered here at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.spec import JobSpec, SpecError, load_spec_text
from gpujob.spec.runtime import RUNTIMES, RuntimeBase
from spec_samples import COMMAND

ROOT = Path(__file__).resolve().parents[2]
SHARED = set(RuntimeBase.model_fields)  # backend, env, secrets: every backend has them
# A valid value for each backend setting that is not a plain non-empty string.
SPECIAL = {"host": "box-1", "host_idle": "90m", "host_max_lifetime": "2h", "stage": "s3://team-bucket/gpujob"}


def own(backend: str) -> list[str]:
    """The settings only some backends have that ``backend`` has."""
    return [name for name in RUNTIMES[backend].model_fields if name not in SHARED]


def sample(name: str) -> str:
    return SPECIAL.get(name, f"{name.replace('_', '-')}-1")


def spec_text(runtime: dict[str, str]) -> str:
    """COMMAND with a block runtime section, one key a line (line 5 onwards)."""
    return COMMAND + "runtime:\n" + "".join(f"  {key}: {value}\n" for key, value in runtime.items())


def whose(backends: list[str]) -> str:
    return f"{backends[0]} backend" if len(backends) == 1 else f"{', '.join(backends[:-1])} and {backends[-1]} backends"


OWN = [(backend, name) for backend in RUNTIMES for name in own(backend)]
FOREIGN = [(backend, name, [b for b in RUNTIMES if name in RUNTIMES[b].model_fields])
           for backend in RUNTIMES for name in sorted({n for b in RUNTIMES for n in own(b)} - set(own(backend)))]


def test_every_backend_but_local_has_settings_of_its_own_and_some_are_not_shared():
    assert own("local") == [] and all(own(b) for b in RUNTIMES if b != "local")
    assert FOREIGN  # otherwise the refusal tests below test nothing


@pytest.mark.parametrize(("backend", "name"), OWN, ids=[f"{b}-{n}" for b, n in OWN])
def test_a_backend_takes_each_of_its_own_settings(backend, name):
    runtime = {"backend": backend, name: sample(name)}
    if backend == "host" and name != "host":
        runtime["host"] = "box-1"  # the host backend needs a host or a host_type
    spec = load_spec_text(spec_text(runtime), "job.yaml").spec
    assert isinstance(spec.runtime, RUNTIMES[backend])
    assert getattr(spec.runtime, name) == sample(name)


@pytest.mark.parametrize(("backend", "name", "owners"), FOREIGN, ids=[f"{b}-{n}" for b, n, _ in FOREIGN])
def test_a_setting_of_another_backend_is_refused_naming_its_backend(backend, name, owners):
    with pytest.raises(SpecError) as caught:
        load_spec_text(spec_text({"backend": backend, name: sample(name)}), "job.yaml")
    (problem,) = [p for p in caught.value.problems if p.key == f"runtime.{name}"]
    fix = f"set runtime.backend: {owners[0]}" if len(owners) == 1 else \
        f"set runtime.backend to one of {', '.join(owners)}"
    assert str(problem) == (f"job.yaml:6:3: runtime.{name}: a setting of the {whose(owners)}; "
                            f"this spec runs on {backend} (remove it, or {fix})")


def test_without_a_backend_a_spec_is_local_and_refuses_other_backends_settings():
    with pytest.raises(SpecError) as caught:
        load_spec_text(spec_text({"namespace": "speech"}), "job.yaml")
    assert str(caught.value) == ("job.yaml:5:3: runtime.namespace: a setting of the kubernetes backend; "
                                 "this spec runs on local (remove it, or set runtime.backend: kubernetes)")


def test_validate_refuses_another_backends_setting_with_exit_2(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(spec_text({"backend": "local", "host_type": "gpu_1x_a10"}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert (f"{path}:6:3: runtime.host_type: a setting of the host backend; this spec runs on local "
            "(remove it, or set runtime.backend: host)") in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("runtime", "message"), [
    ({"backend": "docker", "imag": "x"}, 'unknown key "imag"; did you mean "image"?'),
    ({"backend": "local", "namspace": "x"},
     'unknown key "namspace"; did you mean "namespace" (a setting of the kubernetes backend)?'),
    ({"backend": "docker", "bogus": "x"}, 'unknown key "bogus"; allowed here: backend, env, secrets, image'),
    ({"checkpoint": "x"}, 'unknown key "checkpoint"; did you mean model.checkpoint?'),
])
def test_a_key_no_backend_has_is_an_unknown_key(runtime, message):
    with pytest.raises(SpecError) as caught:
        load_spec_text(spec_text(runtime), "job.yaml")
    assert [p.message for p in caught.value.problems] == [message]


@pytest.mark.parametrize(("runtime", "message"), [
    ("{backend: k8s}", 'runtime.backend: must be one of local, docker, kubernetes, host (got "k8s"); '
                       'did you mean "kubernetes"?'),
    ("{backend: 5}", "runtime.backend: must be one of local, docker, kubernetes, host (got a number 5)"),
    ("{backend: }", "runtime.backend: must be one of local, docker, kubernetes, host (got nothing (null))"),
    ("5", "runtime: expected a mapping of keys, got a number 5"),
    ("[]", "runtime: expected a mapping of keys, got a list"),
])
def test_a_backend_that_is_not_one_of_the_four_is_named_as_such(runtime, message):
    with pytest.raises(SpecError) as caught:
        load_spec_text(COMMAND + f"runtime: {runtime}\n", "job.yaml")
    assert [f"{p.key}: {p.message}" for p in caught.value.problems] == [message]


# --- --backend ---------------------------------------------------------------------------------

PAIRS = [(a, b) for a in RUNTIMES for b in RUNTIMES if a != b]


@pytest.mark.parametrize(("written", "target"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_backend_leaves_out_the_settings_the_new_backend_does_not_have_with_a_note(written, target):
    runtime = {"backend": written, **{name: sample(name) for name in own(written)}}
    needs = ["runtime.host=box-1"] if target == "host" else []  # the host backend needs a host or a host_type
    loaded = load_spec_text(spec_text(runtime), "job.yaml", needs, backend=target)
    assert isinstance(loaded.spec.runtime, RUNTIMES[target])
    kept = [n for n in own(written) if n in own(target)]
    assert {n: getattr(loaded.spec.runtime, n) for n in kept} == {n: sample(n) for n in kept}
    dropped = [n for n in own(written) if n not in own(target)]
    if dropped:
        (note,) = loaded.notes
        assert note.endswith(f", not used on {target}")
        assert all(f"runtime.{n}" in note for n in dropped)
    else:
        assert loaded.notes == []
    assert all(n not in loaded.data["runtime"] for n in dropped)


def test_backend_set_to_the_specs_own_backend_leaves_a_wrong_setting_an_error():
    with pytest.raises(SpecError, match="runtime.namespace: a setting of the kubernetes backend"):
        load_spec_text(spec_text({"backend": "docker", "namespace": "x"}), "job.yaml", backend="docker")


def test_set_runtime_backend_is_the_file_speaking_so_another_backends_settings_stay_errors():
    with pytest.raises(SpecError, match="runtime.host_type: a setting of the host backend; this spec runs on local"):
        load_spec_text(spec_text({"backend": "host", "host_type": "x"}), "job.yaml", ["runtime.backend=local"])


@pytest.mark.parametrize("target", ["local", "kubernetes"])
def test_render_with_backend_moves_the_lambda_example_and_says_what_it_left_out(target, tmp_path):
    result = CliRunner().invoke(app, ["render", str(ROOT / "jobs" / "train-el-small-lambda.yaml"), "--backend", target],
                                env={"GPUJOB_HOME": str(tmp_path)})
    # exit 2 where it names a PROBLEM submit would refuse (local, on a machine without the GPU it asks for)
    assert result.exit_code == (2 if "PROBLEM:" in result.stdout else 0), result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: runtime.")]
    assert notes == [f"note: runtime.host_type, runtime.filesystem, runtime.host_idle, runtime.host_max_lifetime "
                     f"are settings of the host backend, not used on {target}"]
    assert "gpu_1x_a10" not in result.stdout and "greek-asr" not in result.stdout


# --- round trip --------------------------------------------------------------------------------

def runtimes(backend: str) -> st.SearchStrategy[dict]:
    """Runtime sections of ``backend``: any of its own settings, environment and secrets."""
    names = own(backend)
    settings_ = st.fixed_dictionaries({}, optional={n: st.just(sample(n)) for n in names})
    env = st.dictionaries(st.sampled_from(["MODE", "WANDB_MODE", "PORT"]), st.text(max_size=8), max_size=3)
    secrets = st.lists(st.sampled_from(["HF_TOKEN", "WANDB_API_KEY"]), unique=True, max_size=2)
    named = st.just({"backend": backend}) if backend != "local" else st.sampled_from([{}, {"backend": "local"}])

    def build(parts: tuple[dict, dict, dict, list]) -> dict:
        runtime = {**parts[0], **parts[1], "env": parts[2], "secrets": parts[3]}
        if backend == "host" and not runtime.get("host"):
            runtime["host_type"] = "gpu_1x_a10"
        return runtime

    return st.tuples(named, settings_, env, secrets).map(build)


@settings(max_examples=40, deadline=None)
@given(runtime=st.sampled_from(list(RUNTIMES)).flatmap(runtimes))
def test_every_backends_runtime_survives_a_dump_and_a_reload(runtime):
    data = {"apiVersion": "gpujob/v1", "kind": "command", "command": ["echo"], "runtime": runtime}
    spec = JobSpec.model_validate(data)
    assert type(spec.runtime) is RUNTIMES[runtime.get("backend", "local")]
    again = JobSpec.model_validate(spec.model_dump(by_alias=True, mode="json"))
    assert again == spec and type(again.runtime) is type(spec.runtime)


@pytest.mark.parametrize("backend", list(RUNTIMES))
def test_several_nodes_need_a_backend_whose_runtime_says_multi_node(backend):
    """resources.nodes above 1 is refused, naming the backends that take it, on every backend whose runtime
    model does not say ``multi_node`` (kubernetes' does); the backend's own needs (a host's) are met here."""
    runtime = {"backend": backend, **({"host": "box-1"} if backend == "host" else {})}
    text = spec_text(runtime) + "resources: {nodes: 2}\n"
    if RUNTIMES[backend].multi_node:
        assert load_spec_text(text, "job.yaml").spec.resources.nodes == 2
        return
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "job.yaml")
    (problem,) = [p for p in caught.value.problems if p.key == "resources.nodes"]
    assert f"2 nodes need runtime.backend: kubernetes; the {backend} backend runs a job on one machine" in str(problem)


@pytest.mark.parametrize(("runtime", "resources"), [
    ({}, ""), ({"host": "box-1"}, ""), ({"host_type": "gpu_1x_a10"}, ""), ({}, "resources: {gpus: 1, gpu_type: A10}\n")])
def test_the_host_backend_needs_a_host_a_host_type_or_a_gpu_type(runtime, resources):
    text = spec_text({"backend": "host", **runtime}) + resources
    if runtime or resources:
        assert load_spec_text(text, "job.yaml").spec.runtime.backend == "host"
        return
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "job.yaml")
    (problem,) = [p for p in caught.value.problems if p.key == "runtime.host"]
    assert "runtime.backend: host needs runtime.host (a host from `gpujob host up`), runtime.host_type" in str(problem)
