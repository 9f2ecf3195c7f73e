"""Chain-of-thought data: cleaning questions, reference answers, multiple choice to free response,
and the measures the reasoning filters use. Pure functions; the stages are in ``stages/cot.py``.

- :func:`strip_hints` removes answer-format instructions that conflict with the reasoning format
  (``Answer with the option's letter ... directly``, ``Answer the question using a single word or
  phrase``, MathVista-style ``Hint: Please answer ... at the end``), so a question asks only the
  question. The patterns are config (``DEFAULT_HINT_PATTERNS`` plus your own).
- :func:`parse_choices` finds a multiple-choice options block (``A. 3`` lines, ``(A) 3 (B) 4``
  inline); :func:`choice_to_free_response` turns a question whose right option is a number or an
  expression into a free-response question with that value as the answer (for RL, where guessing
  a letter is too easy), unless the question refers to its options ("which of the following").
- :func:`reference_from_answer` takes the final answer out of a dataset's answer text.
- :func:`source_reasoning` keeps reasoning a dataset already has (``<think>`` blocks, LLaVA-CoT's
  ``<SUMMARY>/<CAPTION>/<REASONING>/<CONCLUSION>``) in the ``<think>`` + ``\\boxed{}`` format.
- :func:`reasoning_stats`: reasoning length in tokens, the share of its words that only repeat the
  final answer (``answer_overlap``), and the share of repeated word 4-grams (``repetition``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from judges.answers import answer_kind, extract_boxed, extract_final_answer

DEFAULT_HINT_PATTERNS: tuple[str, ...] = (
    r"Hint:\s*Please answer the question[^\n]*?(?:at the end\.?|$)",
    r"Answer with the option'?s letter from the given choices directly\.?",
    r"Answer the question using a single (?:word|number) or phrase\.?",
    r"Please answer the question and provide the correct option letter[^\n]*?(?:at the end\.?|$)",
    r"(?:Please )?(?:directly )?answer with (?:a|one|the) (?:single )?(?:word|number|letter|phrase|option letter)[^.\n]*\.?",
    r"(?:Please )?(?:answer|respond) (?:directly|briefly|concisely)(?: and (?:briefly|concisely))?[^.\n]*\.",
    r"(?:Let's |Please |You should )?(?:think|reason|solve (?:it|this)) step[- ]by[- ]step[^.\n]*\.?",
    r"(?:Please )?(?:put|write|give|present) (?:your|the) (?:final )?answer (?:with)?in \\boxed\{\}[^.\n]*\.?",
    r"(?:Please )?output the thinking process in <think>[^\n]*",
    r"First output the thinking process[^\n]*",
    r"Do not (?:explain|show your work|include (?:any )?(?:explanation|reasoning))[^.\n]*\.?",
)
_LABEL_RE = re.compile(r"^\s*(?:Question|Q)\s*[:：]\s*", re.I)


def strip_hints(text: str, patterns: tuple[str, ...] | list[str] = DEFAULT_HINT_PATTERNS) -> tuple[str, int]:
    """(text without answer-format hints, how many were removed); a leading ``Question:`` label
    left behind is removed too, and blank lines collapsed."""
    removed = 0
    for pat in patterns:
        text, n = re.subn(pat, "", text, flags=re.I)
        removed += n
    if removed:
        text = _LABEL_RE.sub("", text.strip())
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip(), removed


# -- multiple choice ---------------------------------------------------------------------------

_LETTERS = "ABCDEFGH"
_LINE_OPT = re.compile(r"^\s*\(?([A-H])\s*[\.\):：]\s*(.+?)\s*$")
_INLINE_OPT = re.compile(r"\(([A-H])\)\s*")
_OPTIONS_HEADER = re.compile(r"(?:\n|^)\s*(?:Choices|Options|Answer choices|选项)\s*[:：]?\s*$", re.I)
_REFERS_TO_OPTIONS = re.compile(
    r"\b(?:which (?:of the following|one|option|choice|statement|graph|figure)|the following|"
    r"choose|select|pick|options? (?:above|below)|true statement|correct statement)\b", re.I)


@dataclass(frozen=True)
class Choices:
    stem: str                       # the question without its options block
    options: dict[str, str]         # letter -> option text, A, B, C... in order


def parse_choices(question: str) -> Choices | None:
    """The options of a multiple-choice question: consecutive lines ``A. x`` / ``(B) y`` / ``C: z``
    starting at A, or inline ``(A) x (B) y``; at least two. None when there are none."""
    lines = question.split("\n")
    for start in range(len(lines)):
        m = _LINE_OPT.match(lines[start])
        if not m or m.group(1) != "A":
            continue
        opts: dict[str, str] = {}
        k = start
        while k < len(lines):
            m = _LINE_OPT.match(lines[k])
            if not m or m.group(1) != _LETTERS[len(opts)]:
                break
            opts[m.group(1)] = m.group(2).strip()
            k += 1
            if len(opts) == len(_LETTERS):
                break
        if len(opts) >= 2:
            stem = "\n".join(lines[:start] + lines[k:])
            return Choices(_OPTIONS_HEADER.sub("", stem.rstrip()).strip(), opts)
    hits = list(_INLINE_OPT.finditer(question))
    if len(hits) >= 2 and [h.group(1) for h in hits] == list(_LETTERS[:len(hits)]):
        opts = {}
        for h, nxt in zip(hits, hits[1:] + [None]):
            end = nxt.start() if nxt is not None else len(question)
            opts[h.group(1)] = question[h.end():end].strip().rstrip(",;").strip()
        if all(opts.values()):
            stem = question[:hits[0].start()]
            return Choices(_OPTIONS_HEADER.sub("", stem.rstrip()).strip(), opts)
    return None


@dataclass(frozen=True)
class FreeResponse:
    question: str
    reference: str
    status: str     # "converted", or why not: "not_choice", "options_are_text", "refers_to_options"


def choice_to_free_response(question: str, reference: str) -> FreeResponse:
    """A multiple-choice question whose right option is a number or an expression becomes a
    free-response question (the stem) with that option's value as the reference."""
    choices = parse_choices(question)
    if choices is None:
        return FreeResponse(question, reference, "not_choice")
    letter = _reference_letter(reference, choices)
    if letter is None:
        return FreeResponse(question, reference, "not_choice")
    value = choices.options[letter]
    if answer_kind(value) not in ("numeric", "symbolic", "list"):
        return FreeResponse(question, reference, "options_are_text")
    if _REFERS_TO_OPTIONS.search(choices.stem) or not choices.stem.strip():
        return FreeResponse(question, reference, "refers_to_options")
    return FreeResponse(choices.stem.strip(), value, "converted")


def _reference_letter(reference: str, choices: Choices) -> str | None:
    from judges.answers import _is_choice_reference, normalize_answer

    letter = _is_choice_reference(reference)
    if letter is not None:
        return letter if letter in choices.options else None
    ref = normalize_answer(reference)
    hits = [k for k, v in choices.options.items() if normalize_answer(v) == ref]
    return hits[0] if len(hits) == 1 else None


# -- reference answers and existing reasoning ---------------------------------------------------

def reference_from_answer(answer: str | None, short_chars: int = 200) -> str | None:
    """The final answer in a dataset's answer text: what :func:`judges.answers.extract_final_answer`
    finds (``\\boxed{}``, ``<CONCLUSION>``, "the answer is ..."), or the whole answer when it is
    a single line of at most ``short_chars`` characters (most VQA answers)."""
    if not answer or not answer.strip():
        return None
    got = extract_final_answer(answer, short_chars=short_chars)
    if got is not None:
        return got
    return None


_LLAVA_COT = re.compile(
    r"<SUMMARY>(?P<summary>.*?)</SUMMARY>\s*(?:<CAPTION>(?P<caption>.*?)</CAPTION>)?\s*"
    r"<REASONING>(?P<reasoning>.*?)</REASONING>\s*<CONCLUSION>(?P<conclusion>.*?)</CONCLUSION>", re.S | re.I)
_THINK = re.compile(r"^\s*<think>(?P<think>(?:(?!</?think>).)+)</think>(?P<rest>(?:(?!</?think>).)*)$", re.S)


def format_cot(reasoning: str, final_statement: str, answer: str) -> str:
    """``<think>\\nreasoning\\n</think>\\nfinal statement \\boxed{answer}`` (the answer boxed once)."""
    from judges.answers import normalize_answer

    final = final_statement.strip()
    if normalize_answer(final) == normalize_answer(answer):
        final = ""                                     # a bare answer: say it once, boxed
    if extract_boxed(final) is None:
        final = (final.rstrip(".") + f". The answer is \\boxed{{{answer}}}." if final
                 else f"The answer is \\boxed{{{answer}}}.")
    return f"<think>\n{reasoning.strip()}\n</think>\n{final}"


def source_reasoning(answer: str | None, reference: str | None) -> str | None:
    """Reasoning a dataset answer already holds, in the ``<think>`` + ``\\boxed{}`` format: a
    ``<think>...</think>`` answer as is (its final answer boxed when it is not), or LLaVA-CoT's
    tagged stages (summary, caption and reasoning become the thinking; the conclusion the final
    statement). None when the answer holds no reasoning or no reference is known."""
    if not answer or not reference:
        return None
    m = _THINK.match(answer)
    if m:
        return format_cot(m.group("think"), m.group("rest"), reference)
    m = _LLAVA_COT.search(answer)
    if m:
        parts = [m.group(k).strip() for k in ("summary", "caption", "reasoning") if m.group(k) and m.group(k).strip()]
        return format_cot("\n\n".join(parts), m.group("conclusion"), reference)
    return None


def split_think(text: str) -> tuple[str, str] | None:
    """(reasoning, what follows ``</think>``) of a well-formed response, else None."""
    m = _THINK.match(text or "")
    return (m.group("think").strip(), m.group("rest").strip()) if m else None


# -- reasoning measures --------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    "the a an of and to in is are was were be it this that so thus therefore hence answer final which "
    "we as for on with by then get gives equals".split())


def count_tokens(text: str | None) -> int:
    """Words and punctuation marks (the shard's offline ``regex`` count)."""
    return len(_TOKEN.findall(text or ""))


def reasoning_stats(reasoning: str, final_statement: str, reference: str | None) -> dict[str, float | int]:
    """``tokens``: reasoning length; ``answer_overlap``: share of the reasoning's content words that
    also occur in the final statement or the reference (reasoning that only restates the answer
    scores near 1, real derivations low); ``repetition``: share of word 4-grams in the reasoning
    that repeat an earlier one (loops score near 1)."""
    words = [w.lower() for w in _WORD.findall(reasoning or "")]
    content = [w for w in words if w not in _STOP]
    answer_vocab = {w.lower() for w in _WORD.findall(f"{final_statement or ''} {reference or ''}")} - _STOP
    overlap = sum(w in answer_vocab for w in content) / len(content) if content else 1.0
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    repetition = 1 - len(set(grams)) / len(grams) if grams else 0.0
    return {"tokens": count_tokens(reasoning), "answer_overlap": round(overlap, 4), "repetition": round(repetition, 4)}
