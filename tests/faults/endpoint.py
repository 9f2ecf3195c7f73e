"""Point a pipeline's model stages at a SchemaServer: same YAML, real runner, real openai engine.

The config goes through the same smoke rewrite as ``--smoke`` (tiny local CLIP, row limits),
then every ``engine:`` block becomes an ``openai`` engine on the server with short timeouts and
backoff, so faults and retries play out in seconds. The result is written as a YAML file, so it
runs in-process (``run_config``) or through the CLI alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config import apply_inputs, apply_overrides
from pipeline.smoke import apply_smoke


def server_engine(url: str, **opts: Any) -> dict[str, Any]:
    engine = {"kind": "openai", "model": "schema-server", "base_url": url, "api_key_env": None,
              "timeout_s": 2.0, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05,
              "max_concurrency": 4}
    engine.update(opts)
    return engine


def config_on_server(config: str | Path, out: str | Path, url: str, inputs: list[str] = (),
                     overrides: list[str] = (), limit: int | None = None, **engine_opts: Any) -> Path:
    """Write ``out``: ``config`` with its inputs and overrides applied, smoke-sized, engines on ``url``."""
    where = str(config)
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    raw = apply_inputs(raw, list(inputs), where)
    raw = apply_overrides(raw, list(overrides), where)
    raw = apply_smoke(raw, limit)
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("engine"), dict):
            stage["engine"] = server_engine(url, **engine_opts)
    out = Path(out)
    out.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out
