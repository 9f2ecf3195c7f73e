"""The fonts charts are drawn with, and the check that every character has a glyph.

English charts use DejaVu Sans (shipped inside matplotlib). Chinese charts use a CJK font that the
project installs from Debian (``fonts-wqy-microhei``, see tools/system_deps.sh; Noto Sans CJK and
WenQuanYi Zen Hei are found too), registered with matplotlib's font manager and listed before
DejaVu Sans so DejaVu only fills in what the CJK font lacks. Before drawing, every character of
the chart's text is looked up in the fonts' character maps (fontTools): a character that no font
has would be drawn as a tofu box, so the row fails with the character named instead.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

# Where Debian's CJK font packages put their files, in order of preference.
CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",          # fonts-wqy-microhei (tools/system_deps.sh)
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",   # fonts-noto-cjk
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",            # fonts-wqy-zenhei
)
INSTALL_HINT = "install the Debian package fonts-wqy-microhei (bash tools/system_deps.sh) or set cjk_font to a font file"


class FontMissing(RuntimeError):
    """No usable CJK font; the message says how to install one."""


@dataclass(frozen=True)
class ChartFonts:
    """The font families a chart uses (first wins, later ones fill missing glyphs), their files,
    and the code points they cover together."""

    families: tuple[str, ...]
    paths: tuple[str, ...]
    coverage: frozenset[int]

    def missing(self, text: str) -> list[str]:
        """Characters of ``text`` that no font of the set can draw (whitespace needs no glyph)."""
        return sorted({ch for ch in text if not ch.isspace() and ord(ch) not in self.coverage})


def dejavu_path() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


def find_cjk_font(setting: str = "auto") -> str:
    """The CJK font file to use: ``setting`` when it is a path, else the first installed candidate."""
    if setting != "auto":
        if not os.path.isfile(setting):
            raise FontMissing(f"cjk_font {setting!r} is not a font file; {INSTALL_HINT}")
        return setting
    for path in CJK_FONT_CANDIDATES:
        if os.path.isfile(path):
            return path
    raise FontMissing(f"no CJK font found (looked for {', '.join(CJK_FONT_CANDIDATES)}); {INSTALL_HINT}")


@functools.lru_cache(maxsize=8)
def font_coverage(path: str) -> frozenset[int]:
    """Code points with a glyph in the font's best Unicode cmap (first face of a collection)."""
    from fontTools.ttLib import TTFont

    with TTFont(path, fontNumber=0, lazy=True) as font:
        return frozenset(font.getBestCmap() or {})


@functools.lru_cache(maxsize=8)
def register_font(path: str) -> str:
    """Add a font file to matplotlib's font manager (once per process); return its family name."""
    from matplotlib import font_manager

    family = font_manager.get_font(path).family_name
    if not any(f.fname == path for f in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(path)
    return family


def chart_fonts(language: str, cjk_font: str = "auto") -> ChartFonts:
    """Fonts for a chart in ``language`` ('en' or 'zh'); FontMissing when Chinese has no CJK font."""
    base = dejavu_path()
    if language == "en":
        return ChartFonts(("DejaVu Sans",), (base,), font_coverage(base))
    path = find_cjk_font(cjk_font)
    family = register_font(path)
    return ChartFonts((family, "DejaVu Sans"), (path, base), font_coverage(path) | font_coverage(base))
