"""How busy a stage's actors were: the "is the GPU fed?" figure of a model stage.

Each actor of a stateful (model) stage records its setup time, the time it spent inside
the stage's batch function (busy) and the time from setup to its last batch (span). A
stage whose actors are busy 95% of their span is compute-bound; one that waits 60% of it
is starved by the stages upstream (decode, CPU filters, the object store) and more actors
or GPUs will not make it faster. Actors overwrite one small JSON file each after every
batch (so a killed actor's work up to its last batch still counts); the runner sums them
per stage into run.json ``stages.<name>.actors``. Timing only: it never affects output.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Any

from pipeline import storage


class ActorTiming:
    def __init__(self, directory: str, stage: str, setup_s: float):
        self.uri = storage.join(directory, f"{stage}--{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        self.stage = stage
        self.setup_s = setup_s
        self.ready = time.monotonic()
        self.busy_s = 0.0
        self.batches = 0
        self.rows = 0
        self.first_wait_s: float | None = None
        self.last_end = self.ready

    def batch(self, started: float, ended: float, rows: int) -> None:
        if self.first_wait_s is None:
            self.first_wait_s = started - self.ready
        self.busy_s += ended - started
        self.batches += 1
        self.rows += rows
        self.last_end = ended
        storage.write_json(self.uri, {
            "stage": self.stage, "setup_s": round(self.setup_s, 4), "busy_s": round(self.busy_s, 4),
            "span_s": round(self.last_end - self.ready, 4), "first_wait_s": round(self.first_wait_s, 4),
            "batches": self.batches, "rows": self.rows,
        })


def summarize(directory: str) -> dict[str, dict[str, Any]]:
    """Per stage: actors, rows, batches, setup seconds, busy and waiting share of the actors' span."""
    if not storage.exists(directory):
        return {}
    per: dict[str, list[dict]] = {}
    for info in storage.list_files(directory, ".json"):
        rec = storage.read_json(storage.join(directory, info.base_name))
        per.setdefault(rec["stage"], []).append(rec)
    out = {}
    for stage, recs in sorted(per.items()):
        busy = sum(r["busy_s"] for r in recs)
        span = sum(r["span_s"] for r in recs)
        out[stage] = {
            "actors": len(recs),
            "rows": sum(r["rows"] for r in recs),
            "batches": sum(r["batches"] for r in recs),
            "setup_s_max": round(max(r["setup_s"] for r in recs), 3),
            "busy_s": round(busy, 3),
            "span_s": round(span, 3),
            "first_batch_wait_s_max": round(max(r["first_wait_s"] for r in recs), 3),
            # the share of the actors' time after setup spent waiting for input
            "waiting_share": round(1.0 - busy / span, 4) if span > 0 else 0.0,
        }
    return out
