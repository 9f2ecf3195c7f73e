"""language: tag each caption's language and keep only the configured ones.

SAIL-Caption2 is English and Chinese. Captions are short and noisy, so instead of
a statistical language-id model (which needs weights and is unreliable under ~20
characters) this stage decides by script, which is what separates the languages
the recipe cares about:

- Han characters without kana -> ``zh``; any kana -> ``ja``; Hangul -> ``ko``;
  Cyrillic -> ``ru``; Arabic -> ``ar``; whichever script has the most letters wins;
- Latin script -> ``en`` when at least ``min_english_share`` of its words are among
  the 100 most frequent English words or the text is too short to tell (fewer than
  ``min_words`` words), else ``latin`` (French, German, Spanish... are not
  separated: they are all "not English" for this recipe);
- no letters at all -> ``none``.

Rows whose language is not in ``keep`` are dropped with ``reason=language:<code>``.
"""
from __future__ import annotations

import re
import unicodedata

import pandas as pd
import pyarrow as pa
from pydantic import Field

from stages.base import DROPPED, Params, Resources, Stage, mark

_ENGLISH = set("""
the of and to a in is it you that he was for on are with as i his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said an each she which do their
time if will way about many then them write would like so these her long make thing see him two has look more
day could go come did number sound no most people my over know water than call first who may down side been
now find any new work part take get place made live where after back little only round man year came show
every good me give our under name very through just form great think say help low line before turn cause
same mean differ move right boy old too does tell sentence set three want air well also play small end put
home read hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth father
image photo shows showing front background white black red blue green wearing standing sitting holding
""".split())
_WORD = re.compile(r"[A-Za-z]+")


def _script(ch: str) -> str | None:
    o = ord(ch)
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2A6DF or 0xF900 <= o <= 0xFAFF:
        return "han"
    if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:
        return "kana"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
        return "hangul"
    if 0x0400 <= o <= 0x04FF:
        return "cyrillic"
    if 0x0600 <= o <= 0x06FF:
        return "arabic"
    if ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN"):
        return "latin"
    return None


def detect_language(text: str | None, min_english_share: float = 0.2, min_words: int = 4) -> str:
    """Language code of a caption by script (see module docstring)."""
    if not text:
        return "none"
    counts: dict[str, int] = {}
    for ch in text:
        s = _script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return "none"
    if counts.get("kana"):
        return "ja"
    # Han characters carry a word each; weigh them like ~2 Latin letters so a Chinese caption
    # with a brand name in Latin letters stays Chinese.
    weighted = {s: n * (2 if s in ("han", "hangul") else 1) for s, n in counts.items()}
    top = max(weighted, key=lambda s: (weighted[s], s))
    if top != "latin":
        return {"han": "zh", "hangul": "ko", "cyrillic": "ru", "arabic": "ar"}[top]
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < min_words:
        return "en"
    share = sum(w in _ENGLISH for w in words) / len(words)
    return "en" if share >= min_english_share else "latin"


class LanguageParams(Params):
    column: str = Field("text", description="text column to tag")
    keep: list[str] = Field(default_factory=lambda: ["en", "zh"], min_length=1,
                            description="language codes kept (en, zh, ja, ko, ru, ar, latin, none)")
    min_english_share: float = Field(0.2, ge=0, le=1, description="Latin text: share of common English words to call it en")
    min_words: int = Field(4, ge=1, description="Latin text shorter than this is taken as en (too short to tell)")


class LanguageStage(Stage):
    kind = "language"
    Params = LanguageParams
    description = "Tag the caption's language by script (zh/ja/ko/ru/ar, en vs other Latin by common words); keep the listed ones."
    produces = {"language": pa.string()}
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def input_columns(self):
        return {self.params.column: pa.string()}

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        p = self.params
        langs = [detect_language(None if pd.isna(t) else str(t), p.min_english_share, p.min_words)
                 for t in batch[p.column]]
        batch["language"] = langs
        lang = pd.Series(langs, index=batch.index)
        mark(batch, ~lang.isin(p.keep), DROPPED, "language:" + lang)
        return batch
