"""Pipeline configuration as validated data.

A pipeline YAML names its sources and lists its stages. Each stage entry holds
reserved keys (name, kind, after, checkpoint, resources) and, beside them, the
parameters of its kind, validated by that kind's pydantic model. Everything is
checked before Ray starts, and every error names the file, the stage and the
field.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stages.base import Params, Resources, Stage

SOURCE_FORMATS = ("auto", "webdataset", "parquet", "jsonl_images")
RESERVED_STAGE_KEYS = ("name", "kind", "after", "checkpoint", "resources")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the YAML."""


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: Literal["auto", "webdataset", "parquet", "jsonl_images"] = "auto"
    # Field names; None means "detect from common names" (text/caption, image, key/id).
    text_column: str | None = None
    image_column: str | None = None
    key_column: str | None = None


class StageSpec(BaseModel):
    """One validated stage entry; ``params`` is an instance of the kind's Params."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    kind: str
    after: tuple[str, ...] | None = None
    checkpoint: bool | None = None
    resources: Resources
    params: Params


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    description: str = ""
    seed: int = 0
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    stages: tuple[StageSpec, ...]
    path: str = ""  # the file it came from, for messages

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"{self.path}: no stage named {name!r}; stages: {', '.join(self.stage_names())}")

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def raw(self) -> dict[str, Any]:
        """A JSON-able form, for run records and fingerprints."""
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "sources": {k: v.model_dump() for k, v in self.sources.items()},
            "stages": [
                {
                    "name": s.name, "kind": s.kind, "after": list(s.after) if s.after else None,
                    "checkpoint": s.checkpoint, "resources": s.resources.model_dump(),
                    **s.params.model_dump(mode="json"),
                }
                for s in self.stages
            ],
        }


def _describe_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return f"field {loc!r}: {msg}" if loc else msg


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    """Apply ``--set STAGE.FIELD=VALUE`` (or ``sources.NAME.FIELD=VALUE``, or ``seed=N``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected STAGE.FIELD=VALUE")
        key, value_text = item.split("=", 1)
        value = _parse_scalar(value_text)
        parts = key.strip().split(".")
        if parts[0] == "sources":
            if len(parts) < 3 or parts[1] not in (raw.get("sources") or {}):
                raise ConfigError(f"--set {key}: no source {parts[1] if len(parts) > 1 else ''!r} in {where}")
            target = raw["sources"][parts[1]]
            path = parts[2:]
        elif len(parts) == 1:
            target, path = raw, parts
        else:
            stages = raw.get("stages") or []
            matches = [s for s in stages if isinstance(s, dict) and s.get("name", s.get("kind")) == parts[0]]
            if not matches:
                names = [s.get("name", s.get("kind")) for s in stages if isinstance(s, dict)]
                raise ConfigError(f"--set {key}: no stage {parts[0]!r} in {where}; stages: {', '.join(map(str, names))}")
            target, path = matches[0], parts[1:]
        for p in path[:-1]:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a mapping")
        target[path[-1]] = value
    return raw


def apply_inputs(raw: dict[str, Any], inputs: list[str], where: str) -> dict[str, Any]:
    """Apply ``--input PATH`` (single source) or ``--input NAME=PATH``."""
    sources = raw.setdefault("sources", {}) or {}
    for item in inputs:
        name, path = (item.split("=", 1) if "=" in item and not item.split("=", 1)[0].count("/") else (None, item))
        if name is None:
            if len(sources) != 1:
                raise ConfigError(
                    f"--input {item}: {where} has {len(sources)} sources ({', '.join(sources) or 'none'}); "
                    "use --input NAME=PATH"
                )
            name = next(iter(sources))
        if name not in sources:
            raise ConfigError(f"--input {item}: no source {name!r} in {where}; sources: {', '.join(sources)}")
        sources[name] = dict(sources[name] or {})
        sources[name]["path"] = path
        # A new path is re-detected unless the config itself named the format.
    return raw


def parse_config(raw: dict[str, Any], where: str) -> PipelineConfig:
    from stages.registry import stage_kinds

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping with 'name', 'sources' and 'stages'")
    unknown = set(raw) - {"name", "description", "seed", "sources", "stages"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level field(s) {sorted(unknown)}; allowed: name, description, seed, sources, stages")
    name = raw.get("name") or Path(where).stem
    sources: dict[str, SourceConfig] = {}
    for sname, sraw in (raw.get("sources") or {}).items():
        if not _NAME_RE.match(str(sname)):
            raise ConfigError(f"{where}: source name {sname!r} must match {_NAME_RE.pattern}")
        try:
            sources[sname] = SourceConfig(**(sraw or {}))
        except ValidationError as e:
            raise ConfigError(f"{where}: source {sname!r}: " + "; ".join(_describe_error(x) for x in e.errors())) from None
    kinds = stage_kinds()
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{where}: 'stages' must be a non-empty list")
    specs: list[StageSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(stages_raw):
        if not isinstance(entry, dict) or "kind" not in entry:
            raise ConfigError(f"{where}: stage #{i + 1} must be a mapping with a 'kind'")
        entry = dict(entry)
        kind = entry.pop("kind")
        sname = entry.pop("name", kind)
        label = f"{where}: stage {sname!r} (kind {kind})"
        if kind not in kinds:
            raise ConfigError(f"{where}: stage {sname!r}: unknown kind {kind!r}; known kinds: {', '.join(sorted(kinds))}")
        if not _NAME_RE.match(str(sname)):
            raise ConfigError(f"{label}: name must match {_NAME_RE.pattern}")
        if sname in seen:
            raise ConfigError(f"{label}: duplicate stage name; give each stage a unique 'name'")
        seen.add(sname)
        after = entry.pop("after", None)
        if isinstance(after, str):
            after = (after,)
        elif after is not None:
            if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
                raise ConfigError(f"{label}: field 'after': a stage name or a list of names")
            after = tuple(after)
        checkpoint = entry.pop("checkpoint", None)
        if checkpoint is not None and not isinstance(checkpoint, bool):
            raise ConfigError(f"{label}: field 'checkpoint': must be true or false")
        stage_cls: type[Stage] = kinds[kind]
        try:
            res = stage_cls.default_resources.model_copy(update=dict(entry.pop("resources", None) or {}))
            res = Resources(**res.model_dump())
        except ValidationError as e:
            raise ConfigError(f"{label}: resources: " + "; ".join(_describe_error(x) for x in e.errors())) from None
        try:
            params = stage_cls.Params(**entry)
        except ValidationError as e:
            known = ", ".join(sorted(stage_cls.Params.model_fields))
            raise ConfigError(
                f"{label}: " + "; ".join(_describe_error(x) for x in e.errors()) + (f" (known fields: {known})" if known else "")
            ) from None
        specs.append(StageSpec(name=sname, kind=kind, after=after, checkpoint=checkpoint, resources=res, params=params))
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"{where}: field 'seed': must be an integer")
    return PipelineConfig(
        name=str(name), description=str(raw.get("description", "")), seed=seed,
        sources=sources, stages=tuple(specs), path=where,
    )


def load_config(path: str | Path, overrides: list[str] | None = None, inputs: list[str] | None = None,
                smoke: bool = False, limit: int | None = None) -> PipelineConfig:
    """Read, override and validate a pipeline file. Raises ConfigError.

    ``smoke`` swaps every model for a tiny local one (pipeline/smoke.py); ``limit`` caps ingest rows.
    """
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{where}: cannot read config: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    raw = apply_inputs(raw or {}, list(inputs or []), where)
    raw = apply_overrides(raw, list(overrides or []), where)
    if smoke:
        from pipeline.smoke import apply_smoke

        raw = apply_smoke(raw, limit)
    elif limit is not None:
        from pipeline.smoke import reads_source

        for stage in raw.get("stages") or []:
            if isinstance(stage, dict) and reads_source(stage.get("kind")):
                stage["limit"] = limit
    return parse_config(raw, where)
