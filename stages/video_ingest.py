"""video_ingest: video-QA sources into one row per QA pair, each video probed and decoded once.

Source shapes (``format: auto`` tells them apart by what is at the path):
- **annotations** (LLaVA-Video / NextQA style): one or more ``.json`` (a list of records, or
  an object holding one) or ``.jsonl`` files beside a folder of videos (``video_dir``, default:
  the annotation file's folder). A record names a video and gives one QA pair
  (``question``/``answer``, optional ``options`` or NextQA's ``a0..a4`` with an answer index),
  a list of them (``qa``/``qas``/``qa_pairs``), or a LLaVA ``conversations`` list (each human
  turn and the assistant turn after it is one QA pair). Several records may name one video.
- **webdataset**: ``.tar`` files with ``KEY.mp4`` (or another video extension) and ``KEY.json``
  holding the QA pair(s) in the same shapes.

One unit (commit chunk) is ``chunk_videos`` whole videos with all their QA rows (or one tar).
Reading a unit groups QA rows by video, checks each video file (missing, empty, too large, an
image or document with a video extension), hashes it (``video_hash``: size plus sampled byte
ranges), and decodes it ONCE in a crash-isolated child process (``stages/video.py``); the result
is fanned out to every QA row of that video. So the probe, the frame sampling, the frames the
judge sees and the fingerprint are the same for all of a video's questions, and a video that
breaks the decoder turns its own QA rows into ``error`` rows while the unit goes on.

Every QA row in the annotations is a row here (and so in every manifest): a record that is not
JSON, names no video or has no question is an ``error`` row too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
from pydantic import Field

from pipeline import storage
from stages.base import DROPPED, ERROR, KEPT, Params, Resources, Stage, is_media_type, limit_units
from stages.ingest import json_loads_bounded, sample_id_for, scrub_unicode, tar_member_type, unsafe_member_name
from stages.video import VIDEO_EXTS, IsolatedDecoder, VideoDecodeParams, VideoRef, sniff_not_video

VIDEO_FIELDS = ("video", "video_path", "video_file", "video_name", "video_id", "vid", "clip", "path", "file")
QUESTION_FIELDS = ("question", "q", "Q", "query", "prompt", "instruction")
ANSWER_FIELDS = ("answer", "a", "A", "response", "gt_answer", "ground_truth", "output")
OPTIONS_FIELDS = ("options", "candidates", "choices", "option_list")
QA_LIST_FIELDS = ("qa", "qas", "qa_pairs", "questions")
CONVERSATION_FIELDS = ("conversations", "messages")
KEY_FIELDS = ("qid", "question_id", "id", "key", "uid")
_MEDIA_TOKEN = re.compile(r"<(?:video|image)>\s*")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HASH_WHOLE_BELOW = 4 << 20
_HASH_SPAN = 64 << 10


class VideoIngestParams(Params):
    source: str = Field(..., description="name of a source under 'sources' (annotation file/folder, or tars)")
    video_dir: str | None = Field(None, description="folder video paths in annotations are relative to (default: the annotation file's folder)")
    chunk_videos: int = Field(16, ge=1, description="videos (with all their QA rows) per commit unit")
    video_field: str | None = Field(None, description="record field naming the video (None: video, video_path, vid, ...)")
    question_field: str | None = Field(None, description="None: question, q, query, ...")
    answer_field: str | None = Field(None, description="None: answer, a, response, ...")
    options_field: str | None = Field(None, description="None: options, candidates, choices, or NextQA's a0..a4")
    key_field: str | None = Field(None, description="None: qid, question_id, id, key")
    max_video_bytes: int = Field(8 << 30, ge=1, description="larger video files are error rows")
    max_json_bytes: int = Field(64 << 20, ge=1, description="larger .json members of a tar are error rows (never read)")
    decode: VideoDecodeParams = Field(default_factory=VideoDecodeParams, description="probe, checks and frame sampling")
    limit: int | None = Field(None, ge=1, description="read at most this many QA rows (smoke runs); None reads all")


class VideoIngestStage(Stage):
    kind = "video_ingest"
    mode = "source"
    code_deps = ("dedup", "stages.video")  # the fingerprint and frame-index rules, the decoder
    Params = VideoIngestParams
    description = ("Read video QA (JSON/JSONL annotations + video folder, or WebDataset tars): one row per QA pair; "
                   "each video probed and decoded once (decord, crash-isolated), N frames sampled, pHash fingerprint.")
    produces = {
        "text": pa.string(),              # question and answer, for text dedup and token counts
        "question": pa.string(),
        "answer": pa.string(),
        "options": pa.string(),           # JSON list, multiple-choice only
        "qa_index": pa.int32(),           # position among the QA rows of its video
        "meta": pa.string(),
        "video_key": pa.string(),         # the video as the source names it
        "video_path": pa.string(),        # where the bytes are (a file, or the tar holding them)
        "video_offset": pa.int64(),       # tar members: byte range inside video_path
        "video_size": pa.int64(),
        "video_name": pa.string(),        # file or member name (its extension names the container)
        "video_hash": pa.string(),
        "duration_s": pa.float64(),
        "fps": pa.float32(),
        "frame_count": pa.int64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "num_frames": pa.int32(),         # frames sampled (num_frames, or fewer for short videos)
        "frame_indices": pa.list_(pa.int32()),
        "frames": pa.list_(pa.binary()),  # JPEGs, at most decode.max_side px, what the judge sees
        "video_fingerprint": pa.list_(pa.int64()),
        "qa_video_fingerprint": pa.list_(pa.int64()),  # fingerprint XOR a hash of the QA text (see keyed_fingerprint)
        "frame_access": pa.string(),      # "seek" (get_batch) or "sequential" (no reliable timestamps)
        "decode_s": pa.float32(),
        "video_qa_rows": pa.int32(),      # QA rows the one decode of this video served
    }
    default_resources = Resources(num_cpus=1, batch_size=1)

    def __init__(self, params: VideoIngestParams, name: str, context=None):
        super().__init__(params, name, context)
        self.decoder_stats: dict[str, int] = {}

    def manifest_columns(self) -> list[str]:
        return [c for c, t in self.output_columns().items()
                if not is_media_type(t) and not pa.types.is_list(t) and c not in ("text", "meta")]

    # -- driver side: list the units ------------------------------------------------------------
    def list_units(self, sources: dict) -> list[dict[str, Any]]:
        return limit_units(self._list_all_units(sources), self.params.limit)

    def _list_all_units(self, sources: dict) -> list[dict[str, Any]]:
        if self.params.source not in sources:
            raise ValueError(f"stage {self.name!r}: no source named {self.params.source!r}")
        src = sources[self.params.source]
        path, fmt = (src["path"], src["format"]) if isinstance(src, dict) else (src.path, src.format)
        fmt = _detect(path) if fmt == "auto" else {"jsonl_images": "annotations"}.get(fmt, fmt)
        base = {"source": self.params.source, "format": fmt}
        if fmt == "webdataset":
            files = [path] if not storage.is_dir(path) else [i.path for i in storage.list_files(path, ".tar", recursive=True)]
            return [{**base, "path": f, "label": os.path.basename(f)} for f in files]
        if fmt != "annotations":
            raise ValueError(f"source {self.params.source!r}: format {fmt!r} is not a video-QA format "
                             "(use auto, webdataset, or jsonl_images for JSON/JSONL annotations)")
        files = [path] if not storage.is_dir(path) else [
            i.path for i in storage.list_files(path, recursive=True) if i.base_name.lower().endswith((".json", ".jsonl"))]
        videos, invalid = self._group_annotations(files)
        names, label = list(videos), os.path.basename(path.rstrip("/"))
        units = []
        for start in range(0, len(names), self.params.chunk_videos):
            group = [videos[v] for v in names[start:start + self.params.chunk_videos]]
            units.append({**base, "path": path, "videos": group, "invalid": [],
                          "rows": sum(len(g["qas"]) for g in group), "label": f"{label}#video{start}"})
        for f, bad in invalid.items():
            units.append({**base, "path": f, "videos": [], "invalid": bad, "rows": len(bad),
                          "label": f"{os.path.basename(f)}#invalid"})
        return units

    def _group_annotations(self, files: list[str]) -> tuple[dict[str, dict], dict[str, list[dict]]]:
        """QA items of all annotation files grouped by the video file they name (across files), in
        order of first appearance, and per file the records that cannot be used (error rows)."""
        videos: dict[str, dict] = {}
        invalid: dict[str, list[dict]] = {}
        for path in files:
            video_dir = self.params.video_dir or os.path.dirname(path)
            for where, rec, err in _records(path):
                fallback = f"{os.path.basename(path)}:{where}"
                if err:
                    invalid.setdefault(path, []).append({"key": fallback, "reason": err})
                    continue
                try:
                    video, qas = self._qa_items(rec, where)
                except ValueError as e:
                    invalid.setdefault(path, []).append({"key": fallback, "reason": str(e)})
                    continue
                try:
                    resolved = _resolve_video(video_dir, video)
                except ValueError as e:  # a NUL byte or an unencodable character in the name
                    invalid.setdefault(path, []).append(
                        {"key": fallback, "reason": f"bad_video_path: record {where} names {video!r}, not a usable path "
                                                    f"({type(e).__name__})"})
                    continue
                g = videos.setdefault(resolved, {"video": video, "path": resolved, "qas": []})
                for qa in qas:
                    qa["key"] = f"{video}#{qa.pop('local_key')}"
                    g["qas"].append(qa)
        return videos, invalid

    def _qa_items(self, rec: Any, where: Any, video: str | None = None) -> tuple[str, list[dict]]:
        """(video name, QA items) of one record; ValueError names what is missing."""
        p = self.params
        if not isinstance(rec, dict):
            raise ValueError(f"bad_record: record {where} is not a JSON object")
        if video is None:
            vf = _pick(rec, p.video_field, VIDEO_FIELDS)
            if vf is None or rec.get(vf) in (None, ""):
                raise ValueError(f"missing_video_field: record {where} names no video (fields: {', '.join(sorted(rec))[:200]})")
            video = str(rec[vf])
        else:
            vf = None
        kf = _pick(rec, p.key_field, KEY_FIELDS)
        rec_key = str(rec[kf]) if kf and rec.get(kf) is not None else str(where)
        used = {vf, kf}
        items: list[tuple[str, dict]] = []
        conv_f = _pick(rec, None, CONVERSATION_FIELDS)
        list_f = _pick(rec, None, QA_LIST_FIELDS)
        if conv_f and isinstance(rec[conv_f], list):
            used.add(conv_f)
            items = [(f"{rec_key}.{i}", qa) for i, qa in enumerate(_conversation_pairs(rec[conv_f]))]
        elif list_f and isinstance(rec[list_f], list) and all(isinstance(x, dict) for x in rec[list_f]):
            used.add(list_f)
            items = [(f"{rec_key}.{i}", x) for i, x in enumerate(rec[list_f])]
        else:
            items = [(rec_key, rec)]
        rec_meta = {k: v for k, v in rec.items() if k not in used}
        out = []
        for local_key, item in items:
            qa = self._one_qa(item, where)
            item_used = qa.pop("_used")
            own = {k: v for k, v in item.items() if k not in item_used}
            qa["meta"] = ({k: v for k, v in rec_meta.items() if k not in item_used} if item is rec
                          else {**rec_meta, **own}) or None
            qa["local_key"] = local_key
            out.append(qa)
        if not out:
            raise ValueError(f"missing_qa: record {where} holds no question/answer pair")
        return video, out

    def _one_qa(self, item: dict, where: Any) -> dict:
        p = self.params
        qf = _pick(item, p.question_field, QUESTION_FIELDS)
        af = _pick(item, p.answer_field, ANSWER_FIELDS)
        if qf is None or af is None or item.get(qf) in (None, "") or item.get(af) is None:
            raise ValueError(f"missing_qa: record {where} has no question/answer fields "
                             f"(fields: {', '.join(sorted(map(str, item)))[:200]})")
        used = {qf, af}
        of = _pick(item, p.options_field, OPTIONS_FIELDS)
        options = None
        if of and isinstance(item.get(of), list):
            options, used = [str(o) for o in item[of]], used | {of}
        elif p.options_field is None and "a0" in item:  # NextQA: a0..a4 and an answer index
            keys = [f"a{i}" for i in range(26) if f"a{i}" in item]
            options, used = [str(item[k]) for k in keys], used | set(keys)
        question = _MEDIA_TOKEN.sub("", str(item[qf])).strip()
        answer = item[af]
        if options:
            question += "\nOptions:\n" + "\n".join(f"{_LETTERS[i]}. {o}" for i, o in enumerate(options))
            idx = _option_index(answer, options)
            if idx is not None:
                answer = f"{_LETTERS[idx]}. {options[idx]}"
        if not isinstance(answer, str):
            answer = json.dumps(answer, ensure_ascii=False)
        return {"question": question, "answer": answer.strip(), "options": options, "_used": used}

    # -- worker side: read one unit --------------------------------------------------------------
    def read_unit(self, unit: dict[str, Any]) -> pd.DataFrame:
        if unit["format"] == "webdataset":
            groups, rows = self._tar_groups(unit)
        else:
            groups = [{"video_key": g["video"], "ref": VideoRef(g["path"]), "video_name": os.path.basename(g["path"]),
                       "qas": g["qas"]} for g in unit["videos"]]
            rows = [self._row(unit, bad["key"], {}, None, ERROR, bad["reason"]) for bad in unit.get("invalid", [])]
        if unit.get("max_rows") is not None:
            groups, rows = _limit(groups, rows, unit["max_rows"])
        with IsolatedDecoder(timeout_s=self.params.decode.timeout_s) as decoder:
            decoded: dict[str, dict] = {}  # video_hash -> result: identical files decode once too
            for g in groups:
                rows.extend(self._video_rows(unit, g, decoder, decoded))
        for k, v in decoder.stats.items():  # this worker's decoder counters (tests, benchmarks)
            self.decoder_stats[k] = self.decoder_stats.get(k, 0) + v
        return _finalize(rows, unit["source"], self.output_columns())

    def _video_rows(self, unit: dict, g: dict, decoder: IsolatedDecoder, decoded: dict) -> list[dict]:
        ref: VideoRef = g["ref"]
        info = {"video_key": g["video_key"], "video_path": ref.path, "video_offset": ref.offset,
                "video_name": g["video_name"]}
        status, reason, result = KEPT, g.get("error"), {}
        if reason:
            status = ERROR
        else:
            size, reason = _check_file(ref, self.params.max_video_bytes)
            info["video_size"] = size
            if reason is None:
                digest = _sampled_hash(ref, size)
                info["video_hash"] = digest
                if digest not in decoded:
                    with _local(ref) as local:
                        decoded[digest] = decoder.decode(local, self.params.decode)
                result = decoded[digest]
                status, reason = result["status"], result["reason"]
            else:
                status = ERROR
        info.update({k: result.get(k) for k in ("duration_s", "fps", "frame_count", "width", "height", "decode_s",
                                                "frame_access")})
        if status == KEPT:
            info.update(frames=result["frames"], frame_indices=result["frame_indices"],
                        num_frames=len(result["frames"]), video_fingerprint=result.get("fingerprint"))
        info["video_qa_rows"] = len(g["qas"])
        rows = []
        for i, qa in enumerate(g["qas"]):
            values = {**info, **qa, "qa_index": i}
            if info.get("video_fingerprint"):
                values["qa_video_fingerprint"] = keyed_fingerprint(info["video_fingerprint"], qa["question"], qa["answer"])
            rows.append(self._row(unit, qa["key"], values, qa.get("meta"), status, reason))
        return rows

    def _row(self, unit, key: str, values: dict, meta: Any, status: str, reason: str | None) -> dict:
        row = {c: values.get(c) for c in self.produces}
        q, a = values.get("question"), values.get("answer")
        row["text"] = f"{q}\n{a}" if q is not None else None
        row["options"] = json.dumps(values["options"], ensure_ascii=False) if values.get("options") else None
        row["meta"] = json.dumps(meta, ensure_ascii=False, default=str) if meta else None
        row.update(source=unit["source"], source_key=key, status=status, reason=reason)
        return row

    def _tar_groups(self, unit: dict) -> tuple[list[dict], list[dict]]:
        """Video samples of one tar (video member + its QA json), and error rows for the rest."""
        groups, rows = [], []
        path = unit["path"]
        fs, p = storage.resolve(path)
        samples: dict[str, dict] = {}
        order: list[str] = []
        try:
            with fs.open_input_file(p) as raw, tarfile.open(fileobj=raw, mode="r:") as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if "." not in base:
                        continue
                    key = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
                    ext = base.split(".", 1)[1].lower()
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    s = samples[key]
                    kind = "video" if ext in VIDEO_EXTS else ext
                    problem = unsafe_member_name(m.name)
                    if problem is None and not m.isfile():
                        problem = f"not a regular file ({tar_member_type(m)})"
                    if problem is None and kind in s:
                        problem = f"duplicate member {m.name}"
                    if problem is None and kind == "json" and m.size > self.params.max_json_bytes:
                        problem = f"member of {m.size} bytes exceeds max_json_bytes"
                    if problem is not None:
                        s.setdefault("errors", []).append(f"{ext}: {problem}")
                    elif kind == "video":
                        s["video"] = (m.name, m.offset_data, m.size)
                    elif kind == "json":
                        f = tf.extractfile(m)
                        s["json"] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as e:
            rows.append(self._row(unit, f"{unit['label']}#unreadable", {}, {"tar": unit["label"]}, ERROR,
                                  f"corrupt_tar: {type(e).__name__}: {e}"))
        for key in order:
            s = samples[key]
            bad = "bad_member: " + "; ".join(s["errors"]) if s.get("errors") else None
            try:
                rec = json_loads_bounded(s["json"].decode("utf-8")) if "json" in s else None
            except (UnicodeDecodeError, ValueError) as e:
                rows.append(self._row(unit, key, {}, None, ERROR, bad or f"bad_json: {type(e).__name__}: {e}"))
                continue
            try:
                if rec is None:
                    raise ValueError(f"missing_qa: tar sample {key} has no .json")
                _, qas = self._qa_items(rec, "qa", video=key)
            except ValueError as e:
                rows.append(self._row(unit, key, {}, None, ERROR, bad or str(e)))
                continue
            for qa in qas:
                qa["key"] = f"{key}#{qa.pop('local_key')}"
            if bad:
                groups.append({"video_key": key, "ref": VideoRef(path), "video_name": None, "qas": qas, "error": bad})
                continue
            if "video" not in s:
                groups.append({"video_key": key, "ref": VideoRef(path), "video_name": None, "qas": qas,
                               "error": "missing_video: no video member (" + ", ".join(sorted(s)) + ")"})
                continue
            name, offset, size = s["video"]
            groups.append({"video_key": key, "ref": VideoRef(path, offset, size), "video_name": name.rsplit("/", 1)[-1],
                           "qas": qas})
        return groups, rows


# -- helpers ----------------------------------------------------------------------------------
def keyed_fingerprint(fingerprint: list[int], question: str, answer: str) -> list[int]:
    """The video fingerprint with every frame hash XORed with one 64-bit hash of the normalised QA
    text. Hamming distance is unchanged by XOR with a common key, so two rows with the same QA
    text compare exactly as their videos do, while rows with different QA text sit ~32 bits
    apart per frame and never match. ``phash_dedup`` on this column therefore drops a QA row only
    when the same question and answer are asked of a near-identical video (a re-encode, a crop),
    never the other questions of one video, which all share its plain fingerprint."""
    from dedup.minhash import normalize

    # surrogatepass: a lone surrogate in the QA text (a JSON "\ud800" escape) must not raise here;
    # such a row becomes an error when the unit is finalised (stages.ingest.scrub_unicode)
    digest = hashlib.blake2b(normalize(f"{question}\n{answer}").encode("utf-8", "surrogatepass"), digest_size=8).digest()
    key = int.from_bytes(digest, "little", signed=True)
    return [int(h) ^ key for h in fingerprint]


def _detect(path: str) -> str:
    if not storage.exists(path):
        raise ValueError(f"{path} does not exist")
    if not storage.is_dir(path):
        low = path.lower()
        if low.endswith(".tar"):
            return "webdataset"
        if low.endswith((".json", ".jsonl")):
            return "annotations"
        raise ValueError(f"{path}: expected a .json/.jsonl annotation file, a .tar, or a folder of them")
    names = [i.base_name.lower() for i in storage.list_files(path, recursive=True)]
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(n.endswith((".json", ".jsonl")) for n in names):
        return "annotations"
    raise ValueError(f"{path}: no .tar, .json or .jsonl files found")


def _records(path: str) -> Iterator[tuple[Any, Any, str | None]]:
    """(where, record, error) for each record of a JSON or JSONL annotation file."""
    data = storage.read_bytes(path)
    if path.lower().endswith(".jsonl"):
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                yield f"line{n}", json_loads_bounded(raw.decode("utf-8")), None
            except (UnicodeDecodeError, ValueError) as e:
                yield f"line{n}", None, f"bad_json: line {n}: {type(e).__name__}: {e}"
        return
    try:
        doc = json_loads_bounded(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        yield "file", None, f"bad_json: {os.path.basename(path)}: {type(e).__name__}: {e}"
        return
    if isinstance(doc, dict):
        lists = [v for k, v in doc.items() if k in ("data", "annotations", "samples", "items") and isinstance(v, list)]
        if lists:
            doc = lists[0]
        elif doc and all(isinstance(v, list) for v in doc.values()):
            # {video: [qa, ...]}: the key names the video
            doc = [{"video": k, "qa": v} for k, v in doc.items()]
        else:
            doc = [doc]
    if not isinstance(doc, list):
        yield "file", None, f"bad_record: {os.path.basename(path)} holds neither a list nor an object of records"
        return
    for i, rec in enumerate(doc):
        yield f"record{i}", rec, None


def _pick(rec: dict, configured: str | None, candidates: tuple[str, ...]) -> str | None:
    if configured:
        return configured if configured in rec else None
    return next((c for c in candidates if c in rec), None)


def _conversation_pairs(turns: list) -> list[dict]:
    """LLaVA ``{from, value}`` or OpenAI ``{role, content}`` turns -> question/answer pairs."""
    pairs, question = [], None
    for t in turns:
        if not isinstance(t, dict):
            continue
        who = str(t.get("from", t.get("role", ""))).lower()
        text = t.get("value", t.get("content"))
        if who in ("human", "user"):
            question = text
        elif who in ("gpt", "assistant", "model") and question is not None:
            pairs.append({"question": question, "answer": text})
            question = None
    return pairs


def _option_index(answer: Any, options: list[str]) -> int | None:
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        i = int(answer)
        return i if 0 <= i < len(options) else None
    if isinstance(answer, str):
        a = answer.strip().rstrip(".").strip()
        if len(a) == 1 and a.upper() in _LETTERS[: len(options)]:
            return _LETTERS.index(a.upper())
        if a in options:
            return options.index(a)
    return None


def _resolve_video(video_dir: str, name: str) -> str:
    """The video file a record names: absolute, or under video_dir, trying common extensions
    when the name has none (NextQA names videos by id)."""
    path = name if ("://" in name or os.path.isabs(name)) else storage.join(video_dir, name)
    if storage.exists(path) or "." in os.path.basename(name):
        return path
    for ext in VIDEO_EXTS:
        if storage.exists(f"{path}.{ext}"):
            return f"{path}.{ext}"
    return path


def _check_file(ref: VideoRef, max_bytes: int) -> tuple[int | None, str | None]:
    """(size, None) for a plausible video, else (size, reason) for an error row."""
    if ref.offset is not None:
        size = ref.size
        fs, p = storage.resolve(ref.path)
        if ref.offset + size > fs.get_file_info(p).size:
            return size, "video_truncated: the member is cut off by the end of the tar"
    else:
        fs, p = storage.resolve(ref.path)
        info = fs.get_file_info(p)
        if info.type.name == "NotFound":
            return None, f"video_missing: {ref.path}"
        if info.type.name != "File":
            return None, f"video_missing: {ref.path} is not a regular file"
        size = info.size
    if size == 0:
        return 0, "video_empty: 0 bytes"
    if size > max_bytes:
        return size, f"video_too_large: {size} bytes > max_video_bytes {max_bytes}"
    with fs.open_input_file(p) as f:
        f.seek(ref.offset or 0)
        reason = sniff_not_video(f.read(16))
    return size, reason


def _sampled_hash(ref: VideoRef, size: int) -> str:
    """Content hash of a video without reading all of it: the size, the first and last MiB and
    64 KiB at 8 evenly spaced places (the whole file below 4 MiB). Byte-identical files always
    agree; files that differ only outside the sampled ranges (never seen from encoders) would
    collide."""
    fs, p = storage.resolve(ref.path)
    base = ref.offset or 0
    h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    with fs.open_input_file(p) as f:
        if size <= _HASH_WHOLE_BELOW:
            spans = [(0, size)]
        else:
            spans = [(0, 1 << 20)] + [(int(size * k / 9), _HASH_SPAN) for k in range(1, 9)] + [(size - (1 << 20), 1 << 20)]
        for start, n in spans:
            f.seek(base + start)
            h.update(f.read(n))
    return h.hexdigest()


class _local:
    """A local path for the decoder: the file itself, or a temporary copy of a remote one."""

    def __init__(self, ref: VideoRef):
        self.ref, self.tmp = ref, None

    def __enter__(self) -> VideoRef:
        if storage.is_local(self.ref.path):
            return VideoRef(self.ref.path.removeprefix("file://"), self.ref.offset, self.ref.size)
        fs, p = storage.resolve(self.ref.path)
        self.tmp = tempfile.NamedTemporaryFile(suffix=".video")
        with fs.open_input_file(p) as f:
            f.seek(self.ref.offset or 0)
            left = self.ref.size if self.ref.offset is not None else None
            while left is None or left > 0:
                chunk = f.read(1 << 22 if left is None else min(1 << 22, left))
                if not chunk:
                    break
                self.tmp.write(chunk)
                left = None if left is None else left - len(chunk)
        self.tmp.flush()
        return VideoRef(self.tmp.name)

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.close()


def _limit(groups: list[dict], rows: list[dict], max_rows: int) -> tuple[list[dict], list[dict]]:
    """At most max_rows QA rows: error rows first, then whole or cut video groups."""
    rows = rows[:max_rows]
    left, out = max_rows - len(rows), []
    for g in groups:
        if left <= 0:
            break
        out.append({**g, "qas": g["qas"][:left]})
        left -= len(out[-1]["qas"])
    return out, rows


def _finalize(rows: list[dict], source: str, columns: dict[str, pa.DataType]) -> pd.DataFrame:
    """Stable ids from (source, key, video hash, QA text); a repeated id is a dropped duplicate."""
    seen: set[str] = set()
    text_columns = ("source_key", "reason") + tuple(c for c, t in columns.items() if pa.types.is_string(t))
    for r in rows:
        scrub_unicode(r, text_columns)
        content = bytes.fromhex(r["video_hash"]) if r.get("video_hash") else None
        sid = sample_id_for(source, r["source_key"] or "", content, r["text"])
        if sid in seen:
            dup_of, n = sid, 2
            while (sid := sample_id_for(source, f"{r['source_key']}#{n}", content, r["text"])) in seen:
                n += 1
            if r["status"] == KEPT:
                r["status"], r["reason"] = DROPPED, f"duplicate_of:{dup_of}"
        seen.add(sid)
        r["sample_id"] = sid
    cols = ["sample_id", "source", "source_key", "status", "reason"] + list(columns)
    return pd.DataFrame(rows, columns=cols)
