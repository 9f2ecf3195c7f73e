"""Lexical answer support: is a generated answer stated in the caption it was written from?

Caption-to-QA (``stages/caption_qa.py``) asks a language model for question-answer pairs about an
image whose only known content is its caption. An answer the caption does not contain is a
hallucination that would teach the trained model to invent facts, so every pair is checked.

This check needs no model and is deterministic: the answer's *content terms* must appear in the
caption. Both texts are normalised (Unicode NFKC, case-folded), then split into

- numbers: digits (``1,000`` -> ``1000``, ``3.50`` -> ``3.5``) and English number words up to
  ninety-nine (``twenty-four`` -> ``24``, ``a dozen`` -> ``12``), so "24" is supported by
  "twenty-four coins";
- words: letters only, without stop words (articles, pronouns, auxiliaries, prepositions, words
  that refer to the image itself), reduced by a light suffix stemmer (``smiling``/``smiles``/
  ``smile`` -> ``smil``), so inflection does not count as new content;
- CJK text: character bigrams (single characters for one-character runs), since Chinese and
  Japanese have no spaces between words.

``support`` = share of the answer's terms found in the caption's terms. An answer is supported when
``support >= min_support`` **and** every number in it occurs in the caption (a wrong count is never
"mostly right"). Yes/no answers: a leading yes/no is set aside and the rest of the answer is checked;
a bare "yes" is checked through the question's content terms (the question then states the fact);
a bare "no" asserts an absence, which a caption cannot show lexically, so it is unsupported.

Known limits (why ``support: model`` and ``both`` exist): the check sees terms, not meaning, so an
answer that reuses caption words for the wrong question ("What colour is the bus?" -- "blue",
where the sky is blue) passes, and a correct paraphrase with new words fails.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Support", "lexical_support", "content_terms"]

_STOP = frozenset("""
a an the this that these those there here it its it's they them their he him his she her hers we us our
you your i me my one ones some any each every all both either neither other another such
is are was were be been being am do does did done has have had having will would shall should can could
may might must of in on at to from by with without for about into onto over under above below between
behind beside besides near next through across along around against among within upon off out up down
and or but nor so yet as than then too very also just only not no yes
what which who whom whose where when why how
image picture photo photograph shown show shows showing visible seen see depicted depicts appears appear
kind type sort
""".split())
_YES = frozenset({"yes", "yeah", "yep", "true", "correct"})
_NO = frozenset({"no", "nope", "false"})

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_WORD_NUMBERS = {**_UNITS, **_TENS, "dozen": 12, "single": 1, "pair": 2, "couple": 2}

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"(?P<num>\d+(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?)|(?P<cjk>[{_CJK}]+)|(?P<word>[^\W\d_{_CJK}]+)")
_NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(_TENS) + r")[\s-]+(" + "|".join(list(_UNITS)[1:10]) + r")\b")


@dataclass(frozen=True)
class Support:
    """The verdict on one answer: ``score`` is the share of its terms found in the caption;
    ``missing`` the answer's terms (as written) that the caption lacks; ``reason`` why it is not
    supported (None when it is)."""

    supported: bool
    score: float
    missing: tuple[str, ...] = ()
    reason: str | None = None


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    # "twenty-four" -> "24" before tokenising, so compound number words are one number
    return _NUMBER_WORD_RE.sub(lambda m: str(_TENS[m.group(1)] + _UNITS[m.group(2)]), text)


def _number(text: str) -> str:
    value = text.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value.lstrip("0") or "0"


def stem(word: str) -> str:
    """A light English suffix stemmer: enough that inflections match, never a dictionary lookup."""
    w = word
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes", "zes")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if len(w) > len(suffix) + 2 and w.endswith(suffix):
            w = w[: -len(suffix)]
            if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "aeiouls":
                w = w[:-1]  # running -> runn -> run; stopped -> stopp -> stop
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def content_terms(text: str) -> list[tuple[str, str, str]]:
    """(kind, term, surface) for each content term of ``text``, in order; kind is num, word or cjk."""
    out: list[tuple[str, str, str]] = []
    for m in _TOKEN_RE.finditer(_normalise(text)):
        if m.group("num"):
            out.append(("num", _number(m.group("num")), m.group("num")))
        elif m.group("cjk"):
            run = m.group("cjk")
            grams = [run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)]
            out.extend(("cjk", g, g) for g in grams)
        else:
            w = m.group("word")
            if w in _WORD_NUMBERS:
                out.append(("num", str(_WORD_NUMBERS[w]), w))
            elif w not in _STOP and len(w) > 1:
                out.append(("word", stem(w), w))
    return out


def _caption_terms(caption: str) -> set[tuple[str, str]]:
    terms: set[tuple[str, str]] = set()
    for kind, term, _ in content_terms(caption):
        terms.add((kind, term))
        if kind == "cjk":  # a one-character CJK answer matches a character anywhere in the caption
            terms.update(("cjk", c) for c in term)
    return terms


def lexical_support(answer: str, caption: str, question: str = "", min_support: float = 0.75) -> Support:
    """Is ``answer`` (to ``question``) supported by ``caption``? See the module docstring."""
    if not answer or not answer.strip():
        return Support(False, 0.0, (), "empty answer")
    if not 0.0 <= min_support <= 1.0:
        raise ValueError(f"min_support must lie in [0, 1], got {min_support}")
    words = re.findall(r"[^\W_]+", _normalise(answer))
    polarity = None
    if words and words[0] in _YES | _NO:
        polarity = "yes" if words[0] in _YES else "no"
    terms = content_terms(answer)
    if polarity is not None:
        terms = [t for t in terms if t[2] not in _YES | _NO]
    if not terms:
        if polarity == "no":
            return Support(False, 0.0, (), "a bare 'no' asserts an absence, which the caption cannot show")
        if polarity == "yes":
            terms = content_terms(question)
            if not terms:
                return Support(False, 0.0, (), "a bare 'yes' to a question with no content words")
        else:
            return Support(False, 0.0, (), "no content words to check")
    have = _caption_terms(caption)
    missing = [surface for kind, term, surface in terms if (kind, term) not in have]
    missing_numbers = [surface for kind, term, surface in terms if kind == "num" and (kind, term) not in have]
    score = round(1.0 - len(missing) / len(terms), 4)
    missing_unique = tuple(dict.fromkeys(missing))
    if missing_numbers:
        nums = ", ".join(dict.fromkeys(missing_numbers))
        return Support(False, score, missing_unique, f"number(s) not in caption: {nums}")
    if score < min_support:
        shown = ", ".join(missing_unique[:6]) + (", ..." if len(missing_unique) > 6 else "")
        return Support(False, score, missing_unique, f"support {score:.2f} < {min_support:g}; not in caption: {shown}")
    return Support(True, score, missing_unique, None)
