"""Chain-of-thought and RL data: cot_clean, cot_generate, difficulty, cot_route.

The flow (``configs/cot.yaml``) annotates rather than drops, because one question can serve
several outputs (a question whose reasoning failed the format check can still be a good RL item):

1. ``cot_clean``: system prompts removed, answer-format hints that conflict with the reasoning
   format stripped, the reference answer extracted, multiple choice with numeric / symbolic
   options converted to free response, the answer kind and a task category recorded. Rows with no
   reference answer are dropped (``no_reference``); multi-turn samples keep their first exchange.
2. ``cot_generate`` (model): guided reasoning -- the model sees the question and the reference and
   writes ``<think>...</think>`` and a ``\\boxed{}`` answer (the ``guided_cot`` rubric, whose
   checks are the format check); reasoning a source already has (LLaVA-CoT, ``<think>`` answers)
   is reused instead when ``use_source_reasoning``. The boxed answer is verified against the
   reference; the reasoning's length, answer overlap and repetition are measured.
3. ``difficulty`` (model): a policy model answers each verifiable question ``samples`` times (4);
   each answer is extracted and verified against the reference (``judges/answers.py``: numeric,
   symbolic, choice, string; what no rule decides goes to the ``answer_verification`` rubric on
   the verifier engine), and the path that decided each is recorded; ``pass_rate`` = solved / k.
4. ``cot_route`` (global): decides the outputs. ``longcot_sft``: reasoning that passed the format
   check and the answer check, below the redundancy thresholds; ``rl``: verifiable questions not
   solved by all k samples (and, for reasoning-heavy categories, solved by at least one);
   ``think_fusion_sft``: CoT samples and direct-answer samples mixed at ``cot_ratio``, each
   message marked with ``loss`` and each sample with ``think_mode``. A row in no output is dropped
   with the reasons for each. Then per output a ``filter`` on ``split_<name>`` and a shard sink.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from instructions.cot import (
    DEFAULT_HINT_PATTERNS, choice_to_free_response, reasoning_stats, reference_from_answer, source_reasoning,
    split_think, strip_hints,
)
from instructions.schema import IMAGES_TYPE, Conversation, Message, Part, SchemaError
from judges.answers import answer_kind, verify, verify_responses
from judges.config import EngineConfig
from stages.base import DROPPED, ERROR, Params, Resources, Stage, mark_arrow
from stages.shard import order_key

VERIFIABLE_KINDS = ("choice", "numeric", "symbolic", "list", "short_text")


# -- cot_clean ------------------------------------------------------------------------------------

class CotCleanParams(Params):
    hint_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_HINT_PATTERNS),
                                     description="regular expressions removed from questions (answer-format hints)")
    extra_hint_patterns: list[str] = Field(default_factory=list, description="added to hint_patterns")
    strip_system: bool = Field(True, description="remove system prompts")
    convert_choice: bool = Field(True, description="multiple choice with numeric/symbolic options -> free response")
    categories: dict[str, str] = Field(default_factory=dict, description="source name -> task category (else from the answer kind)")
    max_reference_chars: int = Field(200, ge=1, description="a one-line answer up to this long is its own reference")


class CotCleanStage(Stage):
    kind = "cot_clean"
    Params = CotCleanParams
    code_deps = ("instructions",)
    description = "Clean CoT/RL questions: strip system prompts and conflicting hints, extract the reference, MC -> free response."
    produces = {"messages": pa.string(), "question": pa.string(), "answer": pa.string(), "reference": pa.string(),
                "answer_kind": pa.string(), "verifiable": pa.bool_(), "task_category": pa.string(),
                "mc_conversion": pa.string(), "hints_removed": pa.int32(), "source_cot": pa.string()}
    default_resources = Resources(num_cpus=1, batch_size=256)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {"messages": pa.string(), "source": pa.string()}

    def manifest_columns(self) -> list[str]:
        return ["question", "reference", "answer_kind", "verifiable", "task_category", "mc_conversion", "hints_removed"]

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        p = self.params
        patterns = list(p.hint_patterns) + list(p.extra_hint_patterns)
        out: dict[str, list] = {c: [] for c in self.produces}
        status, reason = list(batch["status"]), list(batch["reason"])
        for i, (msgs, source) in enumerate(zip(batch["messages"], batch["source"])):
            row = self._one(msgs, source, patterns)
            if isinstance(row, tuple):
                status[i], reason[i] = row
                row = {}
            for c in out:
                out[c].append(row.get(c))
        for c, v in out.items():
            batch[c] = v
        batch["status"], batch["reason"] = status, reason
        return batch

    def _one(self, msgs: str, source: str, patterns: list[str]) -> dict[str, Any] | tuple[str, str]:
        p = self.params
        try:
            conv = Conversation.from_messages(msgs)
        except SchemaError as e:
            return ERROR, f"bad_messages: {e}"
        turns = conv.turns
        user, assistant = turns[0], turns[1]
        if sum(m.image_count for m in turns[2:]):
            return DROPPED, "multi_turn: later turns hold images; CoT items are one question"
        answer_text = assistant.text
        reference = reference_from_answer(answer_text, p.max_reference_chars)
        if reference is None:
            return DROPPED, "no_reference: no final answer found in the answer"
        question, removed = strip_hints(user.text, patterns)
        mc = "not_choice"
        if p.convert_choice:
            fr = choice_to_free_response(question, reference)
            mc = fr.status
            question, reference = fr.question, fr.reference
        if not question.strip():
            return DROPPED, "no_question: nothing left after removing hints"
        kind = answer_kind(reference)
        category = p.categories.get(source) or {"numeric": "math", "symbolic": "math", "list": "math",
                                                "choice": "choice", "short_text": "short_answer"}.get(kind, "open")
        messages = [] if p.strip_system else [m for m in conv.messages if m.role == "system"]
        messages.append(Message("user", [Part("image")] * user.image_count + [Part("text", question)]))
        messages.append(Message("assistant", [Part("text", answer_text)]))
        return {
            "messages": Conversation(messages).messages_json(), "question": question, "answer": answer_text,
            "reference": reference, "answer_kind": kind, "verifiable": kind in VERIFIABLE_KINDS,
            "task_category": category, "mc_conversion": mc, "hints_removed": removed,
            "source_cot": source_reasoning(answer_text, reference),
        }


# -- shared: prompts with images --------------------------------------------------------------------

def _shown_images(value, max_images: int, max_side: int | None) -> tuple[bytes, ...]:
    from stages.instruction_validate import sample_images
    from stages.judge import shrink_image

    return tuple(shrink_image(b, max_side) for b in sample_images(value)[:max_images])


# -- cot_generate -------------------------------------------------------------------------------------

class CotGenerateParams(Params):
    engine: EngineConfig
    rubric: str = Field("guided_cot", description="a generate rubric with inputs question and reference_answer; its checks are the format check")
    rubric_dirs: list[str] = Field(default_factory=list)
    use_source_reasoning: bool = Field(True, description="reuse reasoning the source already has (LLaVA-CoT, <think>) instead of generating")
    image_max_side: int | None = Field(448, ge=32)
    max_images: int = Field(8, ge=0)
    max_tokens: int | None = Field(None, ge=1, description="default: the rubric's")
    temperature: float | None = Field(None, ge=0, description="default: the rubric's")


class CotGenerateStage(Stage):
    kind = "cot_generate"
    stateful = True
    code_deps = ("judges", "instructions")
    Params = CotGenerateParams
    description = "Guided reasoning: <think>...</think> + \\boxed{} from question and reference; format and answer checks; length/overlap/repetition."
    produces = {"cot_text": pa.string(), "cot_answer": pa.string(), "cot_origin": pa.string(), "cot_status": pa.string(),
                "cot_decided_by": pa.string(), "cot_tokens": pa.int32(), "cot_answer_overlap": pa.float32(),
                "cot_repetition": pa.float32()}
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=32)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {"question": pa.string(), "reference": pa.string(), "images": IMAGES_TYPE, "source_cot": pa.string()}

    def manifest_columns(self) -> list[str]:
        return [c for c in self.produces if c != "cot_text"]

    def setup(self) -> None:
        from judges.config import make_engine
        from judges.rubric import load_rubric

        self.rubric = load_rubric(self.params.rubric, extra_dirs=tuple(self.params.rubric_dirs))
        self.engine = make_engine(self.params.engine)
        self.engine.setup()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from judges.engines.base import Sampling

        p = self.params
        n = len(batch)
        text: list[str | None] = [None] * n
        origin: list[str | None] = [None] * n
        status: list[str | None] = [None] * n
        requests, where = [], []
        sampling = Sampling(max_tokens=p.max_tokens or self.rubric.max_tokens,
                            temperature=self.rubric.temperature if p.temperature is None else p.temperature)
        for i in range(n):
            src = batch["source_cot"].iloc[i]
            if p.use_source_reasoning and isinstance(src, str) and src:
                text[i], origin[i] = src, "source"
                continue
            try:
                images = _shown_images(batch["images"].iloc[i], p.max_images, p.image_max_side)
                sample = {"question": batch["question"].iloc[i], "reference_answer": batch["reference"].iloc[i]}
                requests.append(self.rubric.build_request(sample, images=images, sampling=sampling))
            except Exception as e:  # noqa: BLE001 (an undecodable image: recorded, the row goes on)
                status[i], origin[i] = f"input: {type(e).__name__}: {e}"[:300], "generated"
                continue
            where.append(i)
            origin[i] = "generated"
        for i, res in zip(where, self.engine.generate(requests) if requests else []):
            if res.error:
                status[i] = f"engine: {res.error}"[:300]
            text[i] = res.text
        out = {c: [None] * n for c in self.produces}
        for i in range(n):
            out["cot_text"][i], out["cot_origin"][i] = text[i], origin[i]
            if status[i] is not None or text[i] is None:
                out["cot_status"][i] = status[i] or "engine: no answer"
                continue
            parsed = self.rubric.parse(text[i])
            if parsed.error:
                out["cot_status"][i] = "format: " + parsed.error.split(": ", 1)[-1]
                continue
            answer = parsed.values.get("answer")
            reasoning, final = split_think(text[i]) or ("", "")
            stats = reasoning_stats(reasoning, final, batch["reference"].iloc[i])
            out["cot_answer"][i] = answer
            out["cot_tokens"][i] = stats["tokens"]
            out["cot_answer_overlap"][i] = stats["answer_overlap"]
            out["cot_repetition"][i] = stats["repetition"]
            v = verify(answer, batch["reference"].iloc[i])
            out["cot_decided_by"][i] = v.method
            out["cot_status"][i] = "ok" if v.match is not False else f"answer_mismatch: boxed {answer[:60]!r}"
        for c, v in out.items():
            batch[c] = v
        return batch

    def teardown(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()


# -- difficulty --------------------------------------------------------------------------------------------

DEFAULT_POLICY_PROMPT = ("Answer the question about the image (if any). Think it through, then give the final answer "
                         "inside \\boxed{}. For multiple choice, box only the option letter.")


class DifficultyParams(Params):
    engine: EngineConfig = Field(..., description="the policy model (the model being trained)")
    samples: int = Field(4, ge=1, description="answers sampled per question (k)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(2048, ge=1)
    system_prompt: str = Field(DEFAULT_POLICY_PROMPT, description="the policy's system prompt")
    model_fallback: bool = Field(True, description="answers no rule can verify go to the answer_verification rubric")
    verifier_engine: EngineConfig | None = Field(None, description="engine for that fallback; None uses the policy engine")
    verifier_rubric: str = "answer_verification"
    verifier_max_tokens: int = Field(48, ge=1, description="answer budget of the verification judge (a JSON "
                                     "verdict; constrained decoding may spend one token per character)")
    verifier_temperature: float = Field(0.0, ge=0)
    rubric_dirs: list[str] = Field(default_factory=list)
    image_max_side: int | None = Field(448, ge=32)
    max_images: int = Field(8, ge=0)


class DifficultyStage(Stage):
    kind = "difficulty"
    stateful = True
    code_deps = ("judges", "instructions")
    Params = DifficultyParams
    description = "Sample k answers from a policy model, extract and verify each (rules, then a model judge), pass_rate = solved / k."
    produces = {"difficulty_samples": pa.string(), "difficulty_solved": pa.int32(), "difficulty_k": pa.int32(),
                "pass_rate": pa.float32(), "difficulty_decided_by": pa.string()}
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=32)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {"question": pa.string(), "reference": pa.string(), "verifiable": pa.bool_(), "images": IMAGES_TYPE}

    def manifest_columns(self) -> list[str]:
        return list(self.produces)

    def setup(self) -> None:
        from judges.config import make_engine
        from judges.rubric import load_rubric

        p = self.params
        self.engine = make_engine(p.engine)
        self.engine.setup()
        self.verifier = None
        if p.model_fallback:
            self.verifier_rubric = load_rubric(p.verifier_rubric, extra_dirs=tuple(p.rubric_dirs))
            if p.verifier_engine is not None:
                self.verifier = make_engine(p.verifier_engine)
                self.verifier.setup()
            else:
                self.verifier = self.engine

    def _model_check(self, triples: list[tuple[str, str, str]]) -> list[bool | None]:
        """The answer_verification rubric on the verifier engine; None where it gives no valid verdict."""
        from judges.engines.base import Sampling

        rub = self.verifier_rubric
        sampling = Sampling(max_tokens=self.params.verifier_max_tokens, temperature=self.params.verifier_temperature)
        reqs = [rub.build_request({"question": q, "reference": r, "candidate": c}, sampling=sampling)
                for q, r, c in triples]
        out: list[bool | None] = []
        for (q, r, c), res in zip(triples, self.verifier.generate(reqs)):
            parsed = rub.parse(res.text, None) if not res.error else None
            out.append(None if parsed is None or parsed.error else bool(parsed.values["answer_equivalent"]))
        return out

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from judges.engines.base import JudgeRequest, Sampling

        p = self.params
        n = len(batch)
        out = {c: [None] * n for c in self.produces}
        requests, owner = [], []
        for i in range(n):
            flag = batch["verifiable"].iloc[i]
            if flag is None or pd.isna(flag) or not bool(flag):
                continue
            try:
                images = _shown_images(batch["images"].iloc[i], p.max_images, p.image_max_side)
            except Exception:  # noqa: BLE001 (undecodable image: not sampled, recorded below)
                out["difficulty_decided_by"][i] = json.dumps({"input_error": p.samples})
                continue
            for j in range(p.samples):
                requests.append(JudgeRequest(system=p.system_prompt, user_text=str(batch["question"].iloc[i]),
                                             images=images, sampling=Sampling(max_tokens=p.max_tokens,
                                                                              temperature=p.temperature,
                                                                              top_p=p.top_p, seed=j)))
                owner.append(i)
        results = self.engine.generate(requests) if requests else []
        items = [(None if r.error else r.text, str(batch["reference"].iloc[i]), str(batch["question"].iloc[i]))
                 for i, r in zip(owner, results)]
        checks = verify_responses(items, model=self._model_check if self.verifier is not None else None)
        per_row: dict[int, list] = {}
        for i, chk in zip(owner, checks):
            per_row.setdefault(i, []).append(chk)
        for i, chks in per_row.items():
            solved = sum(c.match is True for c in chks)
            out["difficulty_samples"][i] = json.dumps([c.to_dict() for c in chks], ensure_ascii=False)
            out["difficulty_solved"][i] = solved
            out["difficulty_k"][i] = len(chks)
            out["pass_rate"][i] = solved / len(chks)
            out["difficulty_decided_by"][i] = json.dumps(dict(Counter(c.decided_by for c in chks)), sort_keys=True)
        for c, v in out.items():
            batch[c] = v
        return batch

    def teardown(self) -> None:
        for e in {id(x): x for x in (getattr(self, "engine", None), getattr(self, "verifier", None)) if x}.values():
            e.close()


# -- cot_route ----------------------------------------------------------------------------------------------

class LongCotRules(Params):
    max_answer_overlap: float = Field(0.6, ge=0, le=1, description="reasoning that mostly repeats the answer is dropped")
    max_repetition: float = Field(0.3, ge=0, le=1, description="share of repeated word 4-grams allowed in the reasoning")
    min_tokens: int = Field(16, ge=0)
    max_tokens: int = Field(16_384, ge=1)


class RlRules(Params):
    answer_kinds: list[str] = Field(default_factory=lambda: ["choice", "numeric", "symbolic", "list", "short_text"],
                                    description="answer kinds that count as verifiable for RL")
    drop_all_solved: bool = Field(True, description="items every sample solved are too easy")
    reasoning_heavy: list[str] = Field(default_factory=lambda: ["math"],
                                       description="task categories where items no sample solved are dropped too")


class FusionRules(Params):
    cot_ratio: float = Field(0.1, gt=0, lt=1, description="share of CoT samples in think_fusion_sft (SPEC: about 1:9)")
    direct_empty_think: bool = Field(True, description="direct answers start with an empty <think></think> block")
    direct_max_chars: int = Field(300, ge=1, description="a dataset answer up to this long is the direct answer, else the reference")


class CotRouteParams(Params):
    longcot: LongCotRules = Field(default_factory=LongCotRules)
    rl: RlRules = Field(default_factory=RlRules)
    fusion: FusionRules = Field(default_factory=FusionRules)
    seed: int | None = Field(None, description="fusion sampling seed; defaults to the pipeline's seed")


def _user_message(question: str, n_images: int, loss: bool | None = None) -> Message:
    return Message("user", [Part("image")] * n_images + [Part("text", question)], loss)


def _route_rows(table: pa.Table, longcot: dict, rl: dict, seed: int) -> pa.Table:
    """Per row: longcot and rl membership with reasons, fusion eligibility, the hash key."""
    lc, rr = LongCotRules(**longcot), RlRules(**rl)
    d = {c: table.column(c).to_pylist() for c in ("sample_id", "cot_status", "cot_tokens", "cot_answer_overlap",
                                                   "cot_repetition", "answer_kind", "task_category", "difficulty_solved",
                                                   "difficulty_k")}
    in_lc, lc_why, in_rl, rl_why, keys = [], [], [], [], []
    for i in range(table.num_rows):
        why = None
        st = d["cot_status"][i]
        if st != "ok":
            why = st or "no reasoning"
        elif (d["cot_answer_overlap"][i] or 0) > lc.max_answer_overlap:
            why = f"redundant: answer_overlap {d['cot_answer_overlap'][i]:.2f} > {lc.max_answer_overlap:g}"
        elif (d["cot_repetition"][i] or 0) > lc.max_repetition:
            why = f"redundant: repetition {d['cot_repetition'][i]:.2f} > {lc.max_repetition:g}"
        elif (d["cot_tokens"][i] or 0) < lc.min_tokens:
            why = f"length: {d['cot_tokens'][i]} reasoning tokens < {lc.min_tokens}"
        elif (d["cot_tokens"][i] or 0) > lc.max_tokens:
            why = f"length: {d['cot_tokens'][i]} reasoning tokens > {lc.max_tokens}"
        in_lc.append(why is None)
        lc_why.append(why)
        k, solved = d["difficulty_k"][i], d["difficulty_solved"][i]
        why = None
        if d["answer_kind"][i] not in rr.answer_kinds:
            why = f"not verifiable ({d['answer_kind'][i]})"
        elif not k:
            why = "no difficulty samples"
        elif rr.drop_all_solved and solved == k:
            why = f"too easy: all {k} solved"
        elif solved == 0 and d["task_category"][i] in rr.reasoning_heavy:
            why = f"unsolvable: none of {k} solved ({d['task_category'][i]})"
        in_rl.append(why is None)
        rl_why.append(why)
        keys.append(order_key(seed, d["sample_id"][i]))
    for name, vals, t in (("split_longcot", in_lc, pa.bool_()), ("longcot_why", lc_why, pa.string()),
                          ("split_rl", in_rl, pa.bool_()), ("rl_why", rl_why, pa.string()),
                          ("_route_key", keys, pa.int64())):
        table = table.append_column(name, pa.array(vals, t)) if name not in table.column_names else \
            table.set_column(table.column_names.index(name), name, pa.array(vals, t))
    return table


def _keys_where(table: pa.Table, which: str, cot_cut: int | None) -> pa.Table:
    """Hash keys of fusion candidates: ``cot`` rows (accepted reasoning) or ``direct`` rows (the rest)."""
    keys = np.array(table.column("_route_key").to_pylist(), dtype=np.int64)
    lc = np.array(table.column("split_longcot").to_pylist(), dtype=bool)
    chosen_cot = lc & (keys <= cot_cut) if cot_cut is not None else np.zeros(len(keys), dtype=bool)
    mask = lc if which == "cot" else ~chosen_cot
    return pa.table({"k": pa.array(keys[mask], pa.int64())})


def _nth_smallest(ds, which: str, cot_cut: int | None, n: int) -> int | None:
    """The n-th smallest selection key, found in a task: every candidate's key passes through it
    (8 bytes a row), which the driver, whose memory must not grow with the rows, must not hold."""
    from pipeline.remote_call import off_driver

    if n <= 0:
        return None
    refs = ds.map_batches(_keys_where, fn_args=(which, cot_cut), batch_format="pyarrow", batch_size=None).to_arrow_refs()
    return off_driver(_nth_smallest_key, n, *refs, num_cpus=1)


def _nth_smallest_key(n: int, *tables: pa.Table) -> int | None:
    # A block left with no rows may come back without columns.
    keys = np.concatenate([t.column("k").to_numpy() for t in tables if "k" in t.column_names] or [np.empty(0, np.int64)])
    if not len(keys):
        return None
    i = min(n, len(keys)) - 1
    return int(np.partition(keys, i)[i])


def _finish_rows(table: pa.Table, cot_cut: int | None, direct_cut: int | None, fusion: dict, stage: str) -> pa.Table:
    fr = FusionRules(**fusion)
    d = {c: table.column(c).to_pylist() for c in ("_route_key", "split_longcot", "longcot_why", "split_rl", "rl_why",
                                                   "question", "answer", "reference", "cot_text", "num_images")}
    mode, lc_msgs, fu_msgs, rl_msgs, reasons, hit = [], [], [], [], [], []
    for i in range(table.num_rows):
        k = d["_route_key"][i]
        n_img = int(d["num_images"][i] or 0)
        q = d["question"][i]
        m = None
        if cot_cut is not None and d["split_longcot"][i] and k <= cot_cut:
            m = "cot"
        elif direct_cut is not None and k <= direct_cut:
            m = "direct"
        mode.append(m)
        user = _user_message(q, n_img)
        lc_msgs.append(Conversation([user, Message("assistant", [Part("text", d["cot_text"][i])])]).messages_json()
                       if d["split_longcot"][i] else None)
        if m == "cot":
            reply = d["cot_text"][i]
        elif m == "direct":
            ans = (d["answer"][i] or "").strip()
            if (len(ans) > fr.direct_max_chars or "\n" in ans or "<" in ans
                    or verify(ans, d["reference"][i]).match is not True):
                # a long or tagged (reasoning) answer, or one for the question before a multiple-choice
                # conversion ("B" for what is now "24"): the bare reference instead
                ans = d["reference"][i]
            reply = ("<think>\n\n</think>\n\n" + ans) if fr.direct_empty_think else ans
        if m is not None:
            fu_msgs.append(Conversation([_user_message(q, n_img, loss=False),
                                         Message("assistant", [Part("text", reply)], loss=True)]).messages_json())
        else:
            fu_msgs.append(None)
        rl_msgs.append(Conversation([user]).messages_json() if d["split_rl"][i] else None)
        none = not d["split_longcot"][i] and not d["split_rl"][i] and m is None
        hit.append(none)
        reasons.append(f"no_output: longcot ({d['longcot_why'][i]}); rl ({d['rl_why'][i]}); think_fusion (not sampled)"
                       if none else "")
    cols = {"split_fusion": pa.array([x is not None for x in mode], pa.bool_()),
            "think_mode": pa.array(mode, pa.string()), "longcot_messages": pa.array(lc_msgs, pa.string()),
            "fusion_messages": pa.array(fu_msgs, pa.string()), "rl_messages": pa.array(rl_msgs, pa.string())}
    for name, arr in cols.items():
        table = table.append_column(name, arr) if name not in table.column_names else \
            table.set_column(table.column_names.index(name), name, arr)
    return mark_arrow(table, hit, reasons, stage).drop_columns(["_route_key"])


def _route_counts(table: pa.Table) -> pa.Table:
    lc = table.column("longcot_why").to_pylist()
    rl = table.column("rl_why").to_pylist()
    reasons = Counter()
    for w in lc:
        reasons["longcot:" + (w.split(":")[0] if w else "in")] += 1
    for w in rl:
        reasons["rl:" + (w.split(":")[0] if w else "in")] += 1
    return pa.table({"reason": pa.array(list(reasons), pa.string()), "rows": pa.array(list(reasons.values()), pa.int64())})


class CotRouteStage(Stage):
    kind = "cot_route"
    mode = "global"
    Params = CotRouteParams
    description = "Route CoT items into longcot_sft, think_fusion_sft (CoT:direct at a ratio, loss-marked) and rl (verifiable, pass rate)."
    produces = {"split_longcot": pa.bool_(), "longcot_why": pa.string(), "split_rl": pa.bool_(), "rl_why": pa.string(),
                "split_fusion": pa.bool_(), "think_mode": pa.string(), "longcot_messages": pa.string(),
                "fusion_messages": pa.string(), "rl_messages": pa.string()}
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {"question": pa.string(), "answer": pa.string(), "reference": pa.string(), "answer_kind": pa.string(),
                "task_category": pa.string(), "cot_text": pa.string(), "cot_status": pa.string(),
                "cot_tokens": pa.int32(), "cot_answer_overlap": pa.float32(), "cot_repetition": pa.float32(),
                "difficulty_solved": pa.int32(), "difficulty_k": pa.int32(), "num_images": pa.int32()}

    def manifest_columns(self) -> list[str]:
        return ["split_longcot", "longcot_why", "split_rl", "rl_why", "split_fusion", "think_mode"]

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        p = self.params
        seed = p.seed if p.seed is not None else seed
        routed = ds.map_batches(_route_rows, fn_args=(p.longcot.model_dump(), p.rl.model_dump(), seed),
                                batch_format="pyarrow", batch_size=self.default_resources.batch_size).materialize()
        counts = routed.map_batches(_route_counts, batch_format="pyarrow", batch_size=None).to_pandas()
        tally = {r: int(n) for r, n in counts.groupby("reason")["rows"].sum().items()} if len(counts) else {}
        total = routed.count()
        n_cot = tally.get("longcot:in", 0)
        r = p.fusion.cot_ratio
        c = min(n_cot, int(round(r * total)))
        dn = min(total - c, int(round(c * (1 - r) / r))) if c else 0
        cot_cut = _nth_smallest(routed, "cot", None, c)
        direct_cut = _nth_smallest(routed, "direct", cot_cut, dn)
        self.run_stats = {
            "rows": total, "longcot_sft": n_cot, "rl": tally.get("rl:in", 0),
            "think_fusion_sft": {"cot": c, "direct": dn, "cot_ratio": round(c / (c + dn), 4) if c + dn else None,
                                 "target_cot_ratio": r},
            "reasons": {k: v for k, v in sorted(tally.items()) if not k.endswith(":in")},
        }
        log(f"{self.name}: {total} items -> longcot_sft {n_cot}, rl {tally.get('rl:in', 0)}, "
            f"think_fusion_sft {c} CoT + {dn} direct")
        return routed.map_batches(_finish_rows, fn_args=(cot_cut, direct_cut, p.fusion.model_dump(), self.name),
                                  batch_format="pyarrow", batch_size=self.default_resources.batch_size)

