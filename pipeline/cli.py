"""The ``sailcurate`` command line."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from pipeline.config import ConfigError


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.runner import RunOptions, run_pipeline

    if args.from_stage and args.only_stage:
        raise ConfigError("--from and --only cannot be combined")
    config = load_config(args.config, overrides=args.set, inputs=args.input, smoke=args.smoke, limit=args.limit)
    run_dir = args.out or os.path.join("runs", config.name)
    record = run_pipeline(config, RunOptions(run_dir=run_dir, from_stage=args.from_stage,
                                             only_stage=args.only_stage, force=args.force,
                                             resource_check=args.resource_check, media_store=args.media_store))
    from manifests.summary import format_table, summarize

    print(format_table(summarize(run_dir)))
    print(f"\nrun directory: {os.path.abspath(run_dir) if '://' not in run_dir else run_dir}")
    print(f"  manifests:   {os.path.join(run_dir, 'manifests')}/<stage>.parquet")
    shards = os.path.join(run_dir, "shards")
    if os.path.isdir(shards) or "://" in run_dir:
        print(f"  shards:      {shards}/ (shards.json, index.parquet)")
    print(f"  run record:  {os.path.join(run_dir, 'run.json')}  ({record['seconds']:.1f} s)")
    return 0


def _cmd_manifest_summary(args) -> int:
    from manifests.summary import format_table, summarize

    summary = summarize(args.run_dir)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(format_table(summary, show_reasons=True, show_sources=True))
    return 0


def _cmd_manifest_show(args) -> int:
    from manifests.reader import show_rows

    df = show_rows(args.run_dir, args.stage, status=args.status, reason=args.reason, limit=args.limit)
    if args.json:
        print(df.to_json(orient="records", lines=True, force_ascii=False))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            print(df.to_string(index=False) if len(df) else "(no rows)")
    return 0


def _cmd_manifest_diff(args) -> int:
    from manifests.diff import diff_runs, format_diff

    try:
        diff = diff_runs(args.run_a, args.run_b, stages=args.stage or None, status_only=args.status_only)
    except ValueError as e:
        print(f"sailcurate: {e}", file=sys.stderr)
        return 2
    if args.format == "table":
        print(format_diff(args.run_a, args.run_b, diff, limit=args.limit))
    else:
        from manifests.query import format_frame

        print(format_frame(diff, args.format))
    return 0


def _cmd_manifest_query(args) -> int:
    import duckdb

    from manifests.query import format_frame, run_query

    try:
        df = run_query(args.run_dir, args.sql)
    except duckdb.Error as e:
        print(f"sailcurate: query failed: {e}", file=sys.stderr)
        return 2
    print(format_frame(df, args.format, max_width=args.max_width))
    return 0


def _cmd_report(args) -> int:
    from report import build_report

    try:
        path = build_report(args.run_dir, args.out, examples_per_reason=args.examples_per_reason, thumb_px=args.thumb_size)
    except ValueError as e:
        print(f"sailcurate: {e}", file=sys.stderr)
        return 2
    size = os.path.getsize(path) if os.path.exists(path) else 0
    print(f"report: {path} ({size / 1e6:.1f} MB); open it in a browser (works offline)")
    return 0


def _cmd_stages(args) -> int:
    from stages.registry import stage_kinds

    for kind, cls in sorted(stage_kinds().items()):
        res = cls.default_resources
        flags = [cls.mode] + (["stateful"] if cls.stateful else []) + (["sink"] if cls.sink else [])
        print(f"{kind}  [{', '.join(flags)}]  {cls.description}")
        print(f"  resources: num_cpus={res.num_cpus} num_gpus={res.num_gpus} batch_size={res.batch_size}")
        if cls.requires:
            print(f"  reads:     {', '.join(cls.requires)}")
        outs = cls.produces
        if outs:
            print(f"  writes:    {', '.join(outs)}")
        for name, f in cls.Params.model_fields.items():
            default = "required" if f.is_required() else f"default {f.get_default(call_default_factory=True)!r}"
            ann = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "")
            desc = f" - {f.description}" if f.description else ""
            print(f"    {name}: {ann} ({default}){desc}")
        print()
    return 0


def _cmd_export_labels(args) -> int:
    from judges.labels import export_judge_labels

    result = export_judge_labels(args.run_dir, args.rubric, args.out or os.path.join(args.run_dir, "judge_labels", args.rubric),
                                 stage=args.stage)
    print(f"{result['labels']} labels written to {result['path']} ({result['skipped']} rows without a valid answer skipped)")
    return 0


def _cmd_tiny_models(args) -> int:
    from judges.tiny_models import build_all
    from pipeline.smoke import tiny_model_cache

    for name, path in build_all(args.dir or tiny_model_cache()).items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sailcurate", description="Curate vision-language training data on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline (resumes finished work in RUN_DIR)")
    run.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    run.add_argument("--input", action="append", default=[], metavar="[NAME=]PATH",
                     help="replace a source's path (NAME= when the pipeline has several sources)")
    run.add_argument("--out", help="run directory (default: runs/<pipeline name>)")
    run.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun STAGE and everything after it")
    run.add_argument("--only", dest="only_stage", metavar="STAGE", help="rerun only STAGE, from its upstream checkpoint")
    run.add_argument("--force", action="store_true", help="ignore all checkpoints and rerun everything")
    run.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                     help="override a config field (repeatable), validated like the file")
    run.add_argument("--smoke", action="store_true",
                     help="swap every model for a tiny local random model (built on first use) for a cheap end-to-end check")
    run.add_argument("--limit", type=int, metavar="N", help="read at most N rows per ingest stage")
    run.add_argument("--media-store", metavar="URI",
                     help="where media that cannot be referenced in its source (inline Parquet bytes, gzip tars, "
                          "re-encodes, rendered charts) is written once (default: RUN_DIR/media); local or s3://")
    run.add_argument("--no-resource-check", dest="resource_check", action="store_false",
                     help="skip the check that the cluster can hold each segment's actors and tasks (for clusters "
                          "that grow in ways the check does not detect)")
    run.set_defaults(func=_cmd_run)

    man = sub.add_parser("manifest", help="inspect a run's manifests")
    msub = man.add_subparsers(dest="manifest_command", required=True)
    summ = msub.add_parser("summary", help="per-stage counts, top drop reasons, per-source counts")
    summ.add_argument("run_dir")
    summ.add_argument("--json", action="store_true")
    summ.set_defaults(func=_cmd_manifest_summary)
    show = msub.add_parser("show", help="list manifest rows of one stage")
    show.add_argument("run_dir")
    show.add_argument("--stage", required=True)
    show.add_argument("--status", choices=["kept", "dropped", "error"])
    show.add_argument("--reason", help="keep rows whose reason starts with this")
    show.add_argument("--limit", type=int, default=20)
    show.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show.set_defaults(func=_cmd_manifest_show)
    diff = msub.add_parser("diff", help="samples whose status or reason differs between two runs, per stage")
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--stage", action="append", help="only this stage (repeatable)")
    diff.add_argument("--status-only", action="store_true", help="ignore reason changes when the status is the same")
    diff.add_argument("--format", choices=["table", "csv", "json"], default="table")
    diff.add_argument("--limit", type=int, default=50, help="rows shown in table format (0: all)")
    diff.set_defaults(func=_cmd_manifest_diff)
    query = msub.add_parser(
        "query", help="SQL over the manifests (DuckDB)",
        description="Run one SQL statement with DuckDB. Views: one per stage, named after it (SELECT * FROM decode), "
                    "holding its manifest; 'manifests' (all stages stacked, with a 'stage' column); 'stages' "
                    "(stage, kind, segment, position, ran, seconds from run.json). Quote names that are not plain "
                    "identifiers: \"my-stage\".")
    query.add_argument("run_dir")
    query.add_argument("sql")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    query.add_argument("--max-width", type=int, default=60, help="truncate table cells to this many characters")
    query.set_defaults(func=_cmd_manifest_query)

    rep = sub.add_parser("report", help="a static HTML report of a run: funnel, reasons with examples, distributions")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="output folder (default RUN_DIR/report); the report is OUT/index.html")
    rep.add_argument("--examples-per-reason", type=int, default=12, metavar="N",
                     help="example rows shown per drop reason (and kept samples shown)")
    rep.add_argument("--thumb-size", type=int, default=160, metavar="PX", help="thumbnail size in pixels")
    rep.set_defaults(func=_cmd_report)

    ex = sub.add_parser("export-judge-labels", help="a judge's answers as chat-format JSONL, to fine-tune a small judge")
    ex.add_argument("run_dir")
    ex.add_argument("--rubric", required=True, help="rubric name or prefix, e.g. ita or ita_score")
    ex.add_argument("--stage", help="judge stage name when the run has several")
    ex.add_argument("--out", help="output folder (default RUN_DIR/judge_labels/RUBRIC)")
    ex.set_defaults(func=_cmd_export_labels)

    tiny = sub.add_parser("tiny-models", help="build the tiny local random models that --smoke and the tests use")
    tiny.add_argument("dir", nargs="?", help="where (default: $SAILCURATE_CACHE or ~/.cache/sailcurate, /tiny-models)")
    tiny.set_defaults(func=_cmd_tiny_models)

    st = sub.add_parser("stages", help="list stage kinds with their parameters")
    st.set_defaults(func=_cmd_stages)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"sailcurate: config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"sailcurate: {_remote_cause(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # storage: unreachable endpoint, missing bucket, permission denied, disk full
        e = _remote_cause(e)
        print(f"sailcurate: storage error: {e}", file=sys.stderr)
        if getattr(e, "errno", None) == errno.ENOSPC:
            print("sailcurate: the disk is full; free space and rerun the same command: committed work is kept",
                  file=sys.stderr)
        return 2


def _remote_cause(e: BaseException) -> BaseException:
    """The error a Ray task raised, without the worker traceback Ray wraps around it."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


if __name__ == "__main__":
    sys.exit(main())
