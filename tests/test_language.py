"""The caption language tag (stages/language.py): decided by script, en vs other Latin by common words."""
import pandas as pd
import pytest

from stages.base import DROPPED, KEPT
from stages.language import LanguageParams, LanguageStage, detect_language


@pytest.mark.parametrize("text, lang", [
    ("A man riding a horse on the beach at sunset.", "en"),
    ("Two dogs playing with a red ball in the park", "en"),
    ("Astronaut", "en"),                                   # too short to tell: taken as en
    ("一只猫坐在窗台上，旁边有一个Nike鞋盒。", "zh"),            # Latin brand name inside Chinese
    ("柱状图显示了2020年到2023年的销售额", "zh"),
    ("東京タワーの夜景", "ja"),                                # kana means Japanese even with kanji
    ("서울의 야경", "ko"),
    ("Красная площадь в Москве", "ru"),
    ("Un chat noir est assis sur le rebord de la fenêtre avec des fleurs.", "latin"),
    ("Der Hund und die Katze spielen im Garten", "latin"),
    ("12345 !!", "none"),
    ("", "none"),
    (None, "none"),
])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_stage_keeps_listed_languages_and_names_the_others():
    stage = LanguageStage(LanguageParams(keep=["en", "zh"]), "language")
    batch = pd.DataFrame({
        "text": ["A cat on a sofa next to the window", "一只猫在沙发上", "Eine Katze auf dem Sofa neben dem Fenster", None],
        "status": [KEPT] * 4, "reason": [None] * 4,
    })
    out = stage.process(batch)
    assert list(out["language"]) == ["en", "zh", "latin", "none"]
    assert list(out["status"]) == [KEPT, KEPT, DROPPED, DROPPED]
    assert list(out["reason"]) == [None, None, "language:latin", "language:none"]
