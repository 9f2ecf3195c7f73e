"""Can a segment's Ray Data plan ever be scheduled on this cluster? Checked before it runs.

Ray Data never fails a plan the cluster cannot hold: it waits. A model stage's actor pool
holds its ``min_size`` actors for the whole segment, so when those actors leave too little for
one task of the other operators (the source read, a stateless stage, the fragment write), or
when an actor asks for a GPU no node has, the run sits still with no message. This module
states what a segment needs at minimum to make progress and compares it with the cluster:

- actors are held: each stateful stage's minimum pool (``pool_bounds``) times its resources;
- tasks take turns: the operators' tasks do not have to run at the same time, so beside the
  held actors there must be room for the largest single task (measured on a 2-CPU cluster:
  a 1-CPU read, a 1-CPU stateless stage and the 0.25-CPU write beside two 0.5-CPU actors run;
  three 0.5-CPU actors beside the 1-CPU read wait forever);
- every actor and task must fit on one node, and a pool's actors must fit on the nodes.

Only certain failures are reported (necessary conditions, no bin-packing guesses). On a
cluster with an autoscaler the answer can change as nodes join, so the runner warns instead.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from stages.base import Resources

EPS = 1e-6
# Ray Data's default for read tasks (read_parquet of an upstream checkpoint): one CPU each.
READ_TASK_NUM_CPUS = 1.0
# The fragment writer at the end of every segment plan (pipeline/runner.py: Runner._write).
WRITE_TASK_NUM_CPUS = 0.25


def pool_bounds(res: Resources, cluster_totals: dict[str, float]) -> tuple[int, int]:
    """(min_size, max_size) of a stateful stage's actor pool.

    ``concurrency`` pins the pool (min = max = concurrency: all of them are started and held);
    unset, the pool starts at one actor and grows to what the cluster's CPUs (or GPUs) allow.
    """
    if res.num_gpus:
        slots = max(1, int(cluster_totals.get("GPU", 0) / max(res.num_gpus, 0.01)))
    else:
        slots = max(1, int(cluster_totals.get("CPU", 1) / max(res.num_cpus, 0.01)))
    size = res.concurrency or slots
    return (size if res.concurrency else 1), size


def worker_resources(res: Resources) -> dict[str, float]:
    """What one task or actor of a stage asks Ray for (only the resources it asks for)."""
    out = {"CPU": float(res.num_cpus), "GPU": float(res.num_gpus)}
    return {k: v for k, v in out.items() if v > 0}


@dataclass(frozen=True)
class Need:
    """One operator of a segment plan: a held actor pool (``count`` actors) or a task (count 1)."""

    stage: str
    held: bool                    # actors hold their resources for the whole segment
    count: int
    per_worker: dict[str, float]
    knobs: str                    # the config fields that set it, for the fix


@dataclass(frozen=True)
class Cluster:
    totals: dict[str, float]
    nodes: list[dict[str, float]]       # resources of each alive node
    autoscaler: str | None = None       # why we think nodes may still join (None: a fixed cluster)
    notes: list[str] = field(default_factory=list)

    def describe_nodes(self) -> str:
        """Node shapes by CPU and GPU (memory and node labels left out), e.g. ``2 x {CPU: 8, GPU: 1}``."""
        shapes: dict[str, int] = {}
        for n in self.nodes:
            shape = _fmt({"CPU": n.get("CPU", 0.0), **({"GPU": n["GPU"]} if n.get("GPU") else {})})
            shapes[shape] = shapes.get(shape, 0) + 1
        return ", ".join(f"{c} x {s}" for s, c in sorted(shapes.items())) or "no alive node"


def _fmt(res: dict[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if k in res] + sorted(k for k in res if k not in ("CPU", "GPU"))
    return "{" + ", ".join(f"{k}: {_num(res[k])}" for k in keys) + "}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _fits(node: dict[str, float], per_worker: dict[str, float]) -> bool:
    return all(node.get(r, 0.0) + EPS >= v for r, v in per_worker.items())


def _per_node(node: dict[str, float], per_worker: dict[str, float]) -> int:
    """How many such workers one empty node holds."""
    counts = [math.floor((node.get(r, 0.0) + EPS) / v) for r, v in per_worker.items() if v > 0]
    return min(counts) if counts else 1 << 30


def problems(segment: str, needs: list[Need], cluster: Cluster) -> list[str]:
    """Why ``segment`` can never make progress on ``cluster`` (empty when it can)."""
    out: list[str] = []
    for need in needs:
        if not need.per_worker or any(_fits(n, need.per_worker) for n in cluster.nodes):
            continue
        what = "actor" if need.held else "task"
        largest = {r: max((n.get(r, 0.0) for n in cluster.nodes), default=0.0) for r in need.per_worker}
        short = [r for r, v in need.per_worker.items() if largest[r] + EPS < v]
        if short == ["GPU"] and largest["GPU"] == 0:
            out.append(
                f"stage {need.stage!r} asks resources.num_gpus={_num(need.per_worker['GPU'])} per {what}, "
                f"but the cluster has no GPU ({cluster.describe_nodes()}). Fix: set resources.num_gpus: 0 to run "
                f"it on CPU (or use --smoke for tiny CPU models), or add GPU nodes."
            )
        else:
            out.append(
                f"stage {need.stage!r}: one {what} needs {_fmt(need.per_worker)} on one node, but no node has that "
                f"(largest: {_fmt(largest)}; nodes: {cluster.describe_nodes()}). A {what} cannot span nodes. "
                f"Fix: {f'lower {need.knobs}, or ' if need.knobs else ''}add nodes with "
                + " and ".join(f"{_num(v)} {r}" for r, v in need.per_worker.items()) + "."
            )
    if out:
        return out
    for need in needs:
        if need.held and need.per_worker:
            room = sum(_per_node(n, need.per_worker) for n in cluster.nodes)
            if room < need.count:
                out.append(
                    f"stage {need.stage!r}: its actor pool starts at least {need.count} actors of "
                    f"{_fmt(need.per_worker)}, but only {room} fit on the cluster's nodes ({cluster.describe_nodes()}). "
                    f"Fix: {f'lower {need.knobs}, or ' if need.knobs else ''}add nodes."
                )
    if out:
        return out
    held: dict[str, float] = {}
    for need in needs:
        if need.held:
            for r, v in need.per_worker.items():
                held[r] = held.get(r, 0.0) + need.count * v
    tasks = [n for n in needs if not n.held]
    for r in sorted({r for n in needs for r in n.per_worker}):
        total = cluster.totals.get(r, 0.0)
        task = max(tasks, key=lambda n: n.per_worker.get(r, 0.0), default=None)
        beside = task.per_worker.get(r, 0.0) if task else 0.0
        if held.get(r, 0.0) + beside <= total + EPS:
            continue
        pools = [n for n in needs if n.held and n.per_worker.get(r)]
        pool_text = " + ".join(f"{n.count} x {_num(n.per_worker[r])} {r} for {n.stage!r}" for n in pools)
        task_text = f", plus {_num(beside)} {r} for one task of {task.stage!r} beside them" if beside else ""
        fixes = "; ".join(f"{n.stage!r}: {n.knobs}" for n in pools + ([task] if beside else []) if n.knobs)
        out.append(
            f"segment {segment!r} holds actor pools of {pool_text} for its whole run{task_text}: "
            f"{_num(held.get(r, 0.0) + beside)} {r} at once, but the cluster has {_num(total)} {r} "
            f"({cluster.describe_nodes()}). Ray Data would wait forever. Fix: lower {fixes}; or add nodes."
        )
    return out


def cluster_now() -> Cluster:
    """The connected Ray cluster: total and per-node resources, and whether it autoscales."""
    import ray

    totals = {k: float(v) for k, v in ray.cluster_resources().items()}
    nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
    return Cluster(totals=totals, nodes=nodes, autoscaler=autoscaler_evidence())


def autoscaler_evidence() -> str | None:
    """Why this cluster may grow (an autoscaler with node types it can still add), or None.

    Ray has no public "is there an autoscaler" call. Three signals, each read from the GCS:
    1. the autoscaling config the autoscaler publishes there (what Ray Data's own autoscaler
       reads: ``ray._private.state.state.get_cluster_config()``), with a node group that can grow;
    2. autoscaler v2 enabled for the cluster (KubeRay with autoscaling turns it on);
    3. the v1 autoscaler's status report naming node types from a cluster YAML (``ray up``); a
       cluster started by hand runs the same monitor in read-only mode, naming each node
       ``node_<id>``, which is not an autoscaler.
    Where none is seen but nodes can still join, ``--no-resource-check`` skips the check.
    """
    import ray

    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        groups = list(config.node_group_configs) if config else []
        if any(g.max_count == -1 or g.max_count > g.min_count for g in groups if g.resources and g.max_count != 0):
            return "its published autoscaling config has node groups that can still grow"
    except Exception:
        pass
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
        if _internal_kv_get(ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY, namespace=namespace) == b"1":
            return "autoscaler v2 is enabled for it"
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS

        raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        types = _v1_node_types(json.loads(raw)) if raw else set()
        if any(not t.startswith("node_") for t in types):
            return f"its autoscaler runs with node types {sorted(types)}"
    except Exception:
        pass
    return None


def _v1_node_types(status: dict) -> set[str]:
    report = status.get("autoscaler_report") or {}
    types = set(report.get("active_nodes") or {}) | set(report.get("idle_nodes") or {})
    types |= set(report.get("pending_launches") or {})
    types |= set((report.get("node_type_mapping") or {}).values())
    types |= {p[1] for p in report.get("pending_nodes") or [] if len(p) > 1}
    return {str(t) for t in types}


__all__ = ["Need", "Cluster", "pool_bounds", "worker_resources", "problems", "cluster_now", "autoscaler_evidence",
           "READ_TASK_NUM_CPUS", "WRITE_TASK_NUM_CPUS"]
