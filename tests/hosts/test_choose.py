"""The instance type chosen for a job that names a GPU model and a count but no type
(gpujob.hosts.choose): the cheapest that fits and has capacity in the allowed regions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_emulator import DEFAULT_TYPES

from gpujob.hosts.choose import NoMatchingType, choose_type, gpu_matches, matching_hosts
from gpujob.hosts.lambda_api import InstanceType

REGIONS = ["us-east-1", "us-east-3", "us-west-1", "us-south-1"]


def emulator_types(**capacity: list[str]) -> dict[str, InstanceType]:
    """The emulator's types as the client reads them, with ``capacity`` overriding some types' regions."""
    out = {}
    for name, t in DEFAULT_TYPES.items():
        regions = capacity.get(name, t["capacity"])
        item = {"instance_type": {"name": name, **{k: v for k, v in t.items() if k != "capacity"}},
                "regions_with_capacity_available": [{"name": r} for r in regions]}
        out[name] = InstanceType.from_api(item)
    return out


@pytest.mark.parametrize("gpu_type, name, matches", [
    ("H100", "gpu_1x_h100_pcie", True),
    ("h100", "gpu_8x_h100_sxm5", True),
    ("NVIDIA-H100", "gpu_1x_h100_sxm5", True),
    ("H100", "gpu_1x_gh200", False),            # GH200 is not an H100
    ("A10", "gpu_1x_a100_sxm4", False),         # nor an A100 an A10
    ("A10", "gpu_1x_a10", True),
    ("A100-80GB", "gpu_8x_a100_80gb_sxm4", True),
    ("A100-80GB", "gpu_1x_a100_sxm4", False),   # the 40 GB one
    ("GH200", "gpu_1x_gh200", True),
    ("H100 SXM5", "gpu_1x_h100_pcie", False),
])
def test_a_gpu_model_matches_the_types_that_have_it(gpu_type, name, matches):
    assert gpu_matches(gpu_type, emulator_types()[name]) is matches


def test_the_cheapest_h100_with_capacity_is_chosen_and_a_cheaper_one_without_is_passed_over():
    types = emulator_types(gpu_1x_h100_pcie=[], gpu_8x_h100_sxm5=["us-west-1"])
    choice = choose_type(types, "H100", 1)
    assert (choice.itype.name, choice.region) == ("gpu_1x_h100_sxm5", "us-east-3")
    assert choice.runner_up.name == "gpu_8x_h100_sxm5"
    assert choice.passed_over == ["gpu_1x_h100_pcie ($2.49/h): no capacity now"]
    assert "gpu_1x_h100_sxm5 ($3.29/h" in choice.describe()


def test_more_gpus_than_the_one_gpu_types_have_takes_the_8x_type():
    types = emulator_types(gpu_8x_h100_sxm5=["us-west-1"])
    choice = choose_type(types, "H100", 2)
    assert choice.itype.name == "gpu_8x_h100_sxm5"
    assert "gpu_1x_h100_pcie ($2.49/h): 1 GPU, the job asks for 2" in choice.passed_over


def test_only_allowed_regions_count():
    types = emulator_types()
    assert choose_type(types, "H100", 1, ["us-east-3"]).itype.name == "gpu_1x_h100_sxm5"
    assert choose_type(types, "H100", 1, ["us-south-1"]).region == "us-south-1"


def test_no_type_with_capacity_lists_the_types_with_that_gpu_and_where_they_have_some():
    types = emulator_types(gpu_1x_h100_pcie=["us-west-1"], gpu_1x_h100_sxm5=[])
    with pytest.raises(NoMatchingType) as err:
        choose_type(types, "H100", 1, ["us-east-1"])
    msg = err.value.message
    assert msg.startswith("resources.gpu_type: no H100 instance type with 1+ GPU has capacity now in us-east-1")
    assert "gpu_1x_h100_pcie: 1x, $2.49/h, us-west-1" in msg and "gpu_8x_h100_sxm5: 8x, $23.92/h, no capacity" in msg
    with pytest.raises(NoMatchingType) as err:
        choose_type(types, "TPU-v5", 1)
    assert "no Lambda Cloud instance type has TPU-v5 GPUs" in err.value.message and "H100 (80 GB PCIe)" in err.value.hint


@st.composite
def offers(draw):
    """A made-up list of types: H100 and A100 types of 1, 2, 4 or 8 GPUs at random prices and capacity."""
    n = draw(st.integers(1, 8))
    out = {}
    for i in range(n):
        model = draw(st.sampled_from(["H100", "A100", "GH200"]))
        gpus = draw(st.sampled_from([1, 2, 4, 8]))
        name = f"gpu_{gpus}x_{model.lower()}_v{i}"
        out[name] = InstanceType(name, f"{gpus}x {model}", f"{model} (80 GB)", draw(st.integers(50, 5000)),
                                 8, 64, 512, gpus, draw(st.lists(st.sampled_from(REGIONS), unique=True, max_size=3)))
    return out


@settings(max_examples=300, deadline=None)
@given(types=offers(), gpus=st.integers(0, 8), allowed=st.lists(st.sampled_from(REGIONS), unique=True, max_size=2))
def test_the_choice_is_the_cheapest_type_that_fits(types, gpus, allowed):
    def fits(t: InstanceType) -> bool:
        return ("h100" in t.name and t.gpus >= max(gpus, 1)
                and any(not allowed or r in allowed for r in t.regions_with_capacity))

    candidates = [t for t in types.values() if fits(t)]
    if not candidates:
        with pytest.raises(NoMatchingType):
            choose_type(types, "H100", gpus, allowed)
        return
    choice = choose_type(types, "H100", gpus, allowed)
    assert fits(choice.itype)
    assert choice.itype.price_cents_per_hour == min(t.price_cents_per_hour for t in candidates)
    assert choice.region in choice.itype.regions_with_capacity and (not allowed or choice.region in allowed)


def test_idle_hosts_that_fit_are_offered_cheapest_first():
    types = emulator_types()

    def host(name, itype, gpus):
        return SimpleNamespace(name=name, instance_type=itype, price_cents_per_hour=types[itype].price_cents_per_hour,
                               settings={"gpus": gpus})

    hosts = [host("big", "gpu_8x_h100_sxm5", 8), host("a10", "gpu_1x_a10", 1), host("pcie", "gpu_1x_h100_pcie", 1)]
    assert [h.name for h in matching_hosts(hosts, types, "H100", 1)] == ["pcie", "big"]
    assert [h.name for h in matching_hosts(hosts, types, "H100", 4)] == ["big"]
    assert matching_hosts(hosts, types, "A100", 1) == []
