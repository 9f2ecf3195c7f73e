"""The stage graph: parents, checkpoints, segments and fingerprints.

A *segment* is a chain of row-preserving stages that Ray Data streams as one
plan, ending at a checkpoint. Checkpoints are placed where the user marks them
and where the graph needs them: after GPU stages (expensive to redo), before
and after global stages, at branch points and unions, and at leaves.

A stage's fingerprint hashes its kind, parameters, code (its module's source
and the package version) and its parents' fingerprints, so a changed filter
threshold invalidates the filter and what follows, not the judge before it.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.config import ConfigError, PipelineConfig, StageSpec
from stages.base import BASE_COLUMNS, Stage
from stages.registry import get_stage_kind

__all__ = ["Node", "Segment", "Plan", "build_plan"]


@dataclass
class Node:
    spec: StageSpec
    stage_cls: type[Stage]
    parents: list[str]
    children: list[str] = field(default_factory=list)
    checkpoint: bool = False
    fingerprint: str = ""
    columns: dict[str, pa.DataType] = field(default_factory=dict)  # available after this stage

    @property
    def name(self) -> str:
        return self.spec.name

    def make_stage(self, context=None) -> Stage:
        return self.stage_cls(self.spec.params, self.spec.name, context)


@dataclass
class Segment:
    nodes: list[Node]
    inputs: list[str]  # names of the upstream checkpoint stages it reads

    @property
    def end(self) -> Node:
        return self.nodes[-1]

    @property
    def name(self) -> str:
        return self.end.name

    @property
    def mode(self) -> str:
        return self.nodes[0].stage_cls.mode


@dataclass
class Plan:
    config: PipelineConfig
    nodes: dict[str, Node]
    segments: list[Segment]

    def segment_of(self, stage: str) -> Segment:
        for seg in self.segments:
            if any(n.name == stage for n in seg.nodes):
                return seg
        raise ConfigError(f"{self.config.path}: no stage named {stage!r}; stages: {', '.join(self.nodes)}")

    def downstream_segments(self, seg: Segment) -> list[Segment]:
        """``seg`` and every segment that reads from it, transitively, in run order."""
        names = {seg.name}
        out = [seg]
        for s in self.segments:
            if s is not seg and any(i in names for i in s.inputs):
                names.add(s.name)
                out.append(s)
        return out


def _code_version(stage_cls: type[Stage]) -> str:
    from pipeline import __version__

    h = hashlib.sha256(__version__.encode())
    # The stage's own module and every project base class it inherits from (a shared
    # generation base, the shard writer a video shard extends), in MRO order.
    for obj in [c for c in stage_cls.__mro__ if c.__module__.startswith("stages.")]:
        try:
            h.update(Path(inspect.getsourcefile(obj)).read_bytes())
        except (TypeError, OSError):
            h.update(obj.__qualname__.encode())
    for dep in stage_cls.code_deps:
        path = Path(importlib.import_module(dep).__file__)
        if path.name != "__init__.py":  # a single module, e.g. "stages.video"
            h.update(dep.encode() + b"\0" + path.read_bytes())
            continue
        root = path.parent
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".yaml", ".json") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _resolve_parents(config: PipelineConfig) -> dict[str, list[str]]:
    parents: dict[str, list[str]] = {}
    names = config.stage_names()
    previous: str | None = None
    for spec in config.stages:
        cls = get_stage_kind(spec.kind)
        label = f"{config.path}: stage {spec.name!r}"
        if cls.mode == "source":
            if spec.after:
                raise ConfigError(f"{label}: field 'after': a {spec.kind} stage reads a source and takes no upstream")
            parents[spec.name] = []
        else:
            after = list(spec.after) if spec.after else ([previous] if previous else [])
            if not after:
                raise ConfigError(f"{label}: has no upstream; the first stage must be an ingest stage")
            for a in after:
                if a not in names:
                    raise ConfigError(f"{label}: field 'after': no stage named {a!r}; stages: {', '.join(names)}")
                if a not in parents:
                    raise ConfigError(f"{label}: field 'after': {a!r} must be listed before {spec.name!r}")
            parents[spec.name] = after
        previous = spec.name
    return parents


def build_plan(config: PipelineConfig, source_signatures: dict[str, str] | None = None) -> Plan:
    """Validate the graph and columns, place checkpoints, cut segments, fingerprint."""
    parents = _resolve_parents(config)
    nodes: dict[str, Node] = {}
    for spec in config.stages:
        nodes[spec.name] = Node(spec=spec, stage_cls=get_stage_kind(spec.kind), parents=parents[spec.name])
    for n in nodes.values():
        for p in n.parents:
            nodes[p].children.append(n.name)

    for n in nodes.values():
        if n.stage_cls.sink and n.children:
            raise ConfigError(
                f"{config.path}: stage {n.children[0]!r} follows {n.name!r}, a {n.spec.kind} stage that writes "
                "final outputs; give it 'after:' naming an earlier stage"
            )

    # Columns: what each stage can rely on, checked before anything runs.
    for n in nodes.values():
        stage = n.make_stage()
        if n.parents:
            parent_cols = [nodes[p].columns for p in n.parents]
            available = {k: v for k, v in parent_cols[0].items() if all(k in pc for pc in parent_cols[1:])}
        else:
            available = dict(BASE_COLUMNS)
        missing = [c for c in stage.input_columns() if c not in available]
        if missing:
            raise ConfigError(
                f"{config.path}: stage {n.name!r} (kind {n.spec.kind}) needs column(s) {missing} "
                f"that no upstream stage produces; available: {sorted(available)}"
            )
        available.update(stage.output_columns())
        n.columns = available

    # Checkpoints.
    for n in nodes.values():
        forced = (
            not n.children
            or len(n.children) > 1
            or n.stage_cls.mode == "global"
            or any(nodes[c].stage_cls.mode == "global" or len(nodes[c].parents) > 1 for c in n.children)
        )
        default = n.spec.resources.num_gpus > 0
        n.checkpoint = forced or (n.spec.checkpoint if n.spec.checkpoint is not None else default)
        if n.spec.checkpoint is False and forced:
            n.checkpoint = True  # the graph needs it; documented in docs/architecture.md

    # Fingerprints (config order is a topological order: parents are listed first).
    signatures = source_signatures or {}
    for spec in config.stages:
        n = nodes[spec.name]
        payload = {
            "kind": spec.kind,
            "params": spec.params.model_dump(mode="json"),
            "code": _code_version(n.stage_cls),
            "parents": [nodes[p].fingerprint for p in n.parents],
            "seed": config.seed,
        }
        if n.stage_cls.mode == "source":
            src = getattr(spec.params, "source", None)
            if src is not None and src in config.sources:
                payload["source"] = config.sources[src].model_dump()
                payload["source_signature"] = signatures.get(src, "")
        n.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]

    # Segments: a stage joins its parent's segment when the parent is not a checkpoint.
    segments: list[Segment] = []
    seg_of: dict[str, Segment] = {}
    for spec in config.stages:
        n = nodes[spec.name]
        chainable = (
            n.stage_cls.mode == "map"
            and len(n.parents) == 1
            and not nodes[n.parents[0]].checkpoint
        )
        if chainable:
            seg = seg_of[n.parents[0]]
            seg.nodes.append(n)
        else:
            seg = Segment(nodes=[n], inputs=list(n.parents))
            segments.append(seg)
        seg_of[n.name] = seg
    return Plan(config=config, nodes=nodes, segments=segments)
