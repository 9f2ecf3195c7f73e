"""ray_cluster.yaml: valid for `ray up`, and shaped the way the docs promise.

Validation is Ray's own, offline: `ray up` runs
``prepare_config`` (merge with the AWS provider's defaults.yaml, merge setup
commands, fill per-type min/max workers) and then ``validate_config``
(jsonschema against ray/autoscaler/ray-schema.json, plus the head-type and
min/max-workers checks) before it touches the cloud. This test runs the same two
functions, so no AWS credentials, boto3 or network are needed.
"""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"


def _load() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def _ray_up_checks(config: dict) -> dict:
    """What `ray up` does to a config before any provider call."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict:
    return _load()


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return _ray_up_checks(raw)


def _extras() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def _installs_extra(commands: list[str], extra: str) -> bool:
    pattern = re.compile(r"pip install[^\n]*-e\s+[\"']?[^\s\"']*\[([\w,]+)\]")
    return any(extra in m.group(1).split(",") for cmd in commands for m in pattern.finditer(cmd))


def _pip_installs_project(commands: list[str]) -> bool:
    return any(re.search(r"pip install[^\n]*-e\s+[\"']?(\.|~/sailcurate)", c) for c in commands)


def _worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def _setup_for(config: dict, node_type: str) -> list[str]:
    """Setup commands a worker of node_type runs (the autoscaler's rule: a
    per-type worker_setup_commands replaces the merged global list)."""
    spec = config["available_node_types"][node_type]
    return spec.get("worker_setup_commands", config["worker_setup_commands"])


def _gpu_types(config):
    return {k: v for k, v in _worker_types(config).items() if v["resources"].get("GPU", 0) > 0}


def _cpu_types(config):
    return {k: v for k, v in _worker_types(config).items() if v["resources"].get("GPU", 0) == 0}


def test_passes_rays_validation(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-west-2"


def test_yaml_sets_every_key_it_relies_on(raw):
    # Keys left out would be filled from Ray's aws/defaults.yaml (m5.large,
    # a Ray nightly wheel install, ...): the file must set them itself.
    for key in ("cluster_name", "max_workers", "idle_timeout_minutes", "provider", "auth",
                "available_node_types", "head_node_type", "file_mounts", "setup_commands",
                "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert key in raw, key


def test_exactly_one_head_type(prepared):
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0 and head["min_workers"] == 0
    # Every other type is a worker type that can actually be launched.
    workers = _worker_types(prepared)
    assert len(workers) == len(types) - 1 >= 2
    for name, spec in workers.items():
        assert spec["max_workers"] >= 1, name
        assert 0 <= spec["min_workers"] <= spec["max_workers"], name
    assert sum(s["min_workers"] for s in workers.values()) <= prepared["max_workers"]


def test_head_installs_core_package_only(prepared):
    head_cmds = prepared["head_setup_commands"]  # setup_commands + head_setup_commands after prepare
    assert _pip_installs_project(head_cmds)
    for extra in ("cpu", "gpu"):
        assert not _installs_extra(head_cmds, extra), extra
    # No Ray task lands where torch/vLLM are missing.
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0


def test_cpu_worker_type(prepared):
    cpu = _cpu_types(prepared)
    assert cpu, "no worker type without GPUs"
    for name, spec in cpu.items():
        assert "GPU" not in spec["resources"], name
        assert spec["resources"].get("CPU", 0) > 0, name
        cmds = _setup_for(prepared, name)
        assert _installs_extra(cmds, "cpu"), name
        assert not _installs_extra(cmds, "gpu"), name
        joined = "\n".join(cmds)
        # The Makefile venv target's steps, in order.
        install = joined.index("constraints/cpu.txt")
        uninstall = joined.index("pip uninstall -y torchaudio torchcodec")
        shim = joined.index("python tools/torchvision_cpu_shim.py")
        assert install < uninstall < shim, name


def test_gpu_worker_type(prepared):
    gpu = _gpu_types(prepared)
    assert gpu, "no worker type declares a GPU resource"
    for name, spec in gpu.items():
        assert isinstance(spec["resources"]["GPU"], int) and spec["resources"]["GPU"] > 0
        cmds = _setup_for(prepared, name)
        assert _installs_extra(cmds, "gpu"), name
        assert not _installs_extra(cmds, "cpu"), name
        joined = "\n".join(cmds)
        assert "constraints/cpu.txt" not in joined and "torchvision_cpu_shim" not in joined, name


def test_extras_and_files_named_exist():
    extras = _extras()
    assert {"cpu", "gpu"} <= set(extras)
    assert (ROOT / "constraints" / "cpu.txt").is_file()
    assert (ROOT / "tools" / "torchvision_cpu_shim.py").is_file()


def test_project_mounted_at_home_sailcurate(raw):
    assert raw["file_mounts"].get("~/sailcurate") == "."
    # "." is the repo root when `ray up` runs from there, as the comments say.
    assert (ROOT / "pyproject.toml").is_file()
    for name, spec in raw["available_node_types"].items():
        for cmd in spec.get("worker_setup_commands", []):
            if "pip install" in cmd and "-e" in cmd:
                assert "~/sailcurate" in cmd, (name, cmd)


def test_ray_start_disables_usage_stats(prepared):
    for key, flag in (("head_start_ray_commands", "--head"), ("worker_start_ray_commands", "--address")):
        starts = [c for c in prepared[key] if "ray start" in c]
        assert len(starts) == 1, key
        assert flag in starts[0] and "--disable-usage-stats" in starts[0], key
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in prepared["head_start_ray_commands"][-1]


# Negative cases: Ray's validation must reject a broken copy, so the tests
# above are not passing against a validator that accepts anything.

def test_rejects_unknown_top_level_key(raw):
    broken = copy.deepcopy(raw)
    broken["worker_setup_command"] = ["typo"]  # missing "s"
    with pytest.raises(jsonschema.ValidationError, match="worker_setup_command"):
        _ray_up_checks(broken)


def test_rejects_wrong_type(raw):
    broken = copy.deepcopy(raw)
    broken["max_workers"] = "twelve"
    with pytest.raises(jsonschema.ValidationError):
        _ray_up_checks(broken)


def test_rejects_fractional_gpu_resource(raw):
    broken = copy.deepcopy(raw)
    name = next(iter(_gpu_types(raw)))
    broken["available_node_types"][name]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        _ray_up_checks(broken)


def test_rejects_unknown_node_type_key(raw):
    broken = copy.deepcopy(raw)
    name = next(iter(_cpu_types(raw)))
    broken["available_node_types"][name]["setup_commands"] = ["echo not allowed here"]
    with pytest.raises(jsonschema.ValidationError):
        _ray_up_checks(broken)


def test_rejects_head_type_not_defined(raw):
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        _ray_up_checks(broken)


def test_rejects_min_workers_over_global_max(raw):
    broken = copy.deepcopy(raw)
    name = next(iter(_cpu_types(raw)))
    broken["available_node_types"][name]["min_workers"] = raw["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        _ray_up_checks(broken)
