"""Answer verification without a model: is a candidate answer the same as the reference?

Used where answers are verifiable (chain-of-thought filtering, "challenging yet solvable" RL data,
answer-verification before a model judge). ``verify`` tries, in order:

1. ``choice``: the reference is a multiple-choice letter (A-H); the candidate's letter is extracted
   from forms such as ``(B)``, ``B.``, ``Answer: b``, ``the answer is C``, ``\\boxed{C}``.
2. lists/tuples (``(1, 2)``, ``[3, 4]``, ``x = 1, 2``): split at top-level commas and compared
   element by element, in order; intervals must also agree on their brackets.
3. ``numeric``: both sides read as numbers: integers, decimals, thousands separators, percentages,
   fractions (``3/4``, ``\\frac{3}{4}``, ``\\dfrac34``, ``1 1/2``), scientific notation (``1.2e3``,
   ``1.2 \\times 10^{3}``), currency and units (``\\text{cm}``, ``5 cm``, ``30^\\circ``) stripped,
   number words up to twenty. Exact rational comparison; a reference written with *d* decimals
   matches a candidate that rounds to it; a candidate with at least 2 decimals matches a reference
   that is not a terminating decimal (``1/3`` vs ``0.33``). ``50%`` equals ``50`` and ``0.5``.
4. ``symbolic``: both sides parse as a math expression (or an equation) with the small parser
   below, which builds sympy objects directly -- nothing is ever passed to ``eval`` -- and
   equivalence is decided by exact equality, else by agreement at fixed sample points (to 12
   significant digits), else by ``sympy.simplify`` (``2x+2`` vs ``2(x+1)``). ``e`` is Euler's
   number and ``i`` the imaginary unit; other single letters are variables.
5. ``string``: normalised text (case, whitespace, punctuation, articles, LaTeX wrappers). Equal is
   a match; a mismatch is decisive only for closed answers (yes/no, true/false), otherwise the
   verdict is ``undecided`` (``match=None``): free text needs a model judge.

For whole model responses (chain-of-thought, policy samples): ``extract_final_answer`` finds the
final answer (last ``\\boxed{}`` after any ``</think>``, a ``<CONCLUSION>``, "the answer is ...",
or a short bare answer), ``answer_kind`` says what kind of answer a reference is, and
``verify_responses`` checks a batch of responses against their references by the rules above and
sends what stays undecided to a model check (the answer_verification rubric), recording for each
which path decided.
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal

Method = Literal["numeric", "symbolic", "choice", "string", "undecided"]
# How a response was finally decided (``verify_responses``): a ``Method``, ``model`` (the
# answer_verification judge), or ``no_answer`` (no final answer could be extracted).
Decision = Literal["numeric", "symbolic", "choice", "string", "model", "no_answer", "undecided"]


@dataclass(frozen=True)
class Verdict:
    match: bool | None
    method: Method


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _group_end(text: str, open_pos: int) -> int | None:
    """Index just past the '}' that closes the '{' at open_pos (escaped braces don't count)."""
    depth = 0
    i = open_pos
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def extract_boxed(text: str | None) -> str | None:
    """The content of the last top-level ``\\boxed{...}`` (nested braces allowed), or None when
    there is none or the last one is not closed (a truncated answer)."""
    if not text:
        return None
    last = None
    pos = 0
    while True:
        m = _BOXED_RE.search(text, pos)
        if not m:
            break
        end = _group_end(text, m.end() - 1)
        if end is None:
            return None
        last = text[m.end():end - 1]
        pos = end
    return last.strip() if last is not None else None


_LETTERS = "A-H"
_CHOICE_ALONE = re.compile(
    rf"^[\s*_`$]*(?:option|choice)?\s*[\(\[]?\s*([{_LETTERS}a-h])\s*[\)\]]?[\s.:)*_`$]*$", re.I)
_CHOICE_LEAD = re.compile(rf"^[\s*_`]*[\(\[]\s*([{_LETTERS}a-h])\s*[\)\]]|^[\s*_`]*([{_LETTERS}])[.):](?:\s|$)")
_CHOICE_PHRASE = re.compile(
    rf"\b(?i:answer|option|choice)\s*(?i:is|would be|should be|=|:)?\s*:?\s*(?i:option\s*|choice\s*)?"
    rf"(?:\(([{_LETTERS}a-h])\)|\[([{_LETTERS}a-h])\]|\*\*([{_LETTERS}])\*\*|([{_LETTERS}])(?![\w'])|"
    rf"([a-h])(?=\s*(?:[.,;:!)]|$)))")
_CHOICE_PAREN = re.compile(rf"\(([{_LETTERS}])\)|\*\*([{_LETTERS}])\*\*")


def extract_choice(text: str | None) -> str | None:
    """The multiple-choice letter (A-H, upper case) a text answers with, or None.

    Accepts a bare letter (``B``, ``(b)``, ``[C]``, ``D.``), a leading option (``(B) 42 cm``,
    ``C. the dog``), ``\\boxed{C}``, and phrases (``Answer: b``, ``the answer is C``, ``Option (D)``;
    the last one wins). A lower-case letter inside a sentence counts only when nothing follows it
    (``the answer is a cat`` is not A). Otherwise a single distinct ``(X)`` in the text."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        inner = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", boxed)
        m = _CHOICE_ALONE.match(inner) or _CHOICE_LEAD.match(inner)
        if m:
            return next(g for g in m.groups() if g).upper()
    text = _TEXT_CMD.sub(r"\1", text)      # an already unboxed "\text{(B)}"
    m = _CHOICE_ALONE.match(text)
    if m:
        return m.group(1).upper()
    phrases = list(_CHOICE_PHRASE.finditer(text))
    if phrases:
        return next(g for g in phrases[-1].groups() if g).upper()
    m = _CHOICE_LEAD.match(text)
    if m:
        return next(g for g in m.groups() if g).upper()
    found = {a or b for a, b in _CHOICE_PAREN.findall(text)}
    if len(found) == 1:
        return found.pop()
    return None


def _is_choice_reference(ref: str) -> str | None:
    """A reference that *is* a choice letter: ``B``, ``(B)``, ``B.``, ``(B) 42 cm``, ``\\boxed{B}``."""
    s = ref.strip()
    boxed = extract_boxed(s)
    if boxed is not None:
        s = boxed
    s = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", s).strip().strip("$").strip()
    m = re.fullmatch(rf"[\(\[]?\s*([{_LETTERS}])\s*[\)\]]?\.?", s)
    if m:
        return m.group(1)
    m = _CHOICE_LEAD.match(s)
    if m:
        return next(g for g in m.groups() if g).upper()
    return None


# --------------------------------------------------------------------------------------------------
# Cleaning and normalisation
# --------------------------------------------------------------------------------------------------

_ANSWER_PREFIX = re.compile(
    r"^\s*(?:(?:so|thus|therefore|hence)\s*,?\s*)?(?:the\s+)?(?:final\s+)?(?:answer|result)\s*(?:is|:|=)\s*:?\s*", re.I)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")


def _prepare(s: str) -> str:
    """A model's answer -> the answer itself: the last \\boxed{}, without "the answer is", math
    delimiters or a trailing full stop."""
    s = s.strip()
    b = extract_boxed(s)
    if b is not None:
        s = b
    s = _ANSWER_PREFIX.sub("", s)
    s = _latex_light(s)
    for a, b2 in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if s.startswith(a) and s.endswith(b2) and len(s) >= len(a) + len(b2):
            s = s[len(a):len(s) - len(b2)].strip()
            break
    s = re.sub(r"^\*\*(.*)\*\*$", r"\1", s).strip()
    return s.rstrip(".").strip()


def _latex_light(s: str) -> str:
    """Remove LaTeX presentation that never changes a value."""
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\displaystyle", "").replace("\\!", "")
    s = _SPACING.sub(" ", s)
    s = s.replace("\\%", "%").replace("\\$", "$")
    s = re.sub(r"\\(?:dfrac|tfrac)", r"\\frac", s)
    return s.replace("\u2212", "-").replace("\u2013", "-").strip()


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(s: str | None) -> str:
    """Text for comparing free answers: LaTeX wrappers and $ removed, lower case, articles and
    punctuation removed (a '.' or ',' between digits is kept), whitespace collapsed."""
    if not s:
        return ""
    s = _latex_light(s)
    for _ in range(3):
        s = _TEXT_CMD.sub(r"\1", s)
    s = s.replace("$", "").lower()
    s = re.sub(r"(?<=\d)[.,](?=\d)", lambda m: "\0" if m.group() == "." else "\1", s)
    s = "".join(" " if c in string.punctuation else c for c in s)
    s = s.replace("\0", ".").replace("\1", ",")
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Num:
    value: Fraction
    decimals: int | None     # digits after the point when written as a plain decimal, else None
    percent: bool


_UNITS = {
    "mm", "cm", "m", "km", "in", "inch", "inches", "ft", "feet", "foot", "yd", "yard", "yards", "mi",
    "mile", "miles", "meter", "meters", "metre", "metres", "centimeter", "centimeters", "kilometer",
    "kilometers", "millimeter", "millimeters", "mg", "g", "kg", "gram", "grams", "kilogram",
    "kilograms", "lb", "lbs", "pound", "pounds", "oz", "ounce", "ounces", "ton", "tons", "ml", "l",
    "liter", "liters", "litre", "litres", "gallon", "gallons", "s", "sec", "secs", "second", "seconds",
    "min", "mins", "minute", "minutes", "h", "hr", "hrs", "hour", "hours", "day", "days", "week",
    "weeks", "month", "months", "year", "years", "yr", "yrs", "deg", "degree", "degrees", "rad",
    "radian", "radians", "dollar", "dollars", "usd", "cent", "cents", "euro", "euros", "yuan", "rmb",
    "unit", "units", "sq", "square", "cubic", "mph", "kph", "kmh", "km/h", "m/s", "n", "j", "w", "kw",
    "v", "a", "hz", "khz", "mhz", "ghz", "pa", "kpa", "°c", "°f", "c", "f", "k", "people", "person",
    "times", "points", "point", "percent", "mm2", "cm2", "m2", "km2", "cm3", "m3",
}
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
                      "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000})

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+"
_PLAIN_RE = re.compile(rf"^({_NUM})$")
_SCI_RE = re.compile(rf"^({_NUM})\s*(?:[eE]\s*([-+]?\d+)|(?:\\times|\\cdot|\*|x|×|·)\s*10\s*\^\s*\{{?\s*([-+]?\d+)\s*\}}?)$")
_FRAC_RE = re.compile(r"^([-+]?)\s*\\frac\s*(?:\{\s*([-+]?\d+(?:\.\d+)?)\s*\}|(\d))\s*(?:\{\s*([-+]?\d+(?:\.\d+)?)\s*\}|(\d))$")
_SLASH_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*/\s*([-+]?\d+(?:\.\d+)?)$")
_MIXED_RE = re.compile(r"^([-+]?\d+)\s*(?:\s|\\ )\s*(\d+)\s*/\s*(\d+)$|^([-+]?\d+)\s*\\frac\s*\{(\d+)\}\s*\{(\d+)\}$")


def _strip_units(s: str) -> tuple[str, bool]:
    """Remove currency, degree signs and unit words; returns (text, is_percent)."""
    s = s.strip()
    percent = False
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree", " ", s)
    # \text{...} at the end is a unit whatever it says (a number never hides there)
    s = re.sub(r"(?:\\(?:text|mathrm|mbox|textrm)\s*\{\s*[^{}\d]*\}\s*(?:\^\s*\{?[23]\}?)?\s*)+$", "", s).strip()
    if s.endswith("%"):
        percent, s = True, s[:-1].strip()
    s = re.sub(r"^(?:\$|US\$|€|£|¥)\s*", "", s).strip()
    m = re.match(r"^(.*?[\d}.])\s*([A-Za-z°/][A-Za-z°/²³23 ^.-]*)$", s)
    if m:
        unit = re.sub(r"(\^?\s*[23²³])$", "", m.group(2).strip()).strip().rstrip(".").lower()
        words = unit.replace("square", "").replace("cubic", "").split()
        if unit == "percent" or unit == "per cent":
            percent, s = True, m.group(1).strip()
        elif words and all(w in _UNITS for w in words):
            s = m.group(1).strip()
    s = re.sub(r"\s*(?:\$|dollars?)$", "", s).strip()
    return s, percent


def _dec(s: str) -> tuple[Fraction, int | None]:
    s = s.replace(",", "")
    decimals = len(s.split(".", 1)[1]) if "." in s else 0
    return Fraction(s), decimals


def _parse_number(text: str) -> _Num | None:
    s = _latex_light(text).replace("$", "").strip()
    s = re.sub(r"^\{(.*)\}$", r"\1", s).strip()
    s, percent = _strip_units(s)
    if not s:
        return None
    word = s.lower().strip()
    if word in _NUMBER_WORDS:
        return _Num(Fraction(_NUMBER_WORDS[word]), 0, percent)
    try:
        m = _PLAIN_RE.match(s)
        if m:
            v, d = _dec(m.group(1))
            return _Num(v, d, percent)
        m = _SCI_RE.match(s)
        if m:
            v, _ = _dec(m.group(1))
            exp = int(m.group(2) or m.group(3))
            if abs(exp) > 400:
                return None
            return _Num(v * Fraction(10) ** exp, None, percent)
        m = _FRAC_RE.match(s)
        if m:
            num, den = _dec(m.group(2) or m.group(3))[0], _dec(m.group(4) or m.group(5))[0]
            if den == 0:
                return None
            v = num / den
            return _Num(-v if m.group(1) == "-" else v, None, percent)
        m = _MIXED_RE.match(s)
        if m:
            whole, n, d = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), m.group(5), m.group(6))
            if int(d) == 0:
                return None
            w = int(whole)
            frac = Fraction(int(n), int(d))
            return _Num(w - frac if whole.startswith("-") else w + frac, None, percent)
        m = _SLASH_RE.match(s)
        if m:
            den = _dec(m.group(2))[0]
            if den == 0:
                return None
            return _Num(_dec(m.group(1))[0] / den, None, percent)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _terminates(v: Fraction) -> bool:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _round_to(v: Fraction, d: int) -> Fraction:
    q = Fraction(10) ** d
    x = v * q
    # round half away from zero
    r = math.floor(abs(x) + Fraction(1, 2))
    return Fraction(r if x >= 0 else -r) / q


def _close(cand: Fraction, cand_dec: int | None, ref: Fraction, ref_dec: int | None) -> bool:
    if cand == ref:
        return True
    if ref_dec is not None and ref_dec >= 1 and (cand_dec is None or cand_dec > ref_dec):
        if _round_to(cand, ref_dec) == ref:
            return True
    if cand_dec is not None and cand_dec >= 2 and not _terminates(ref):
        if _round_to(ref, cand_dec) == cand:
            return True
    if cand_dec is None and ref_dec is None and ref != 0:   # e.g. scientific notation both sides
        return abs(cand - ref) <= abs(ref) * Fraction(1, 10**9)
    return False


def _numbers_match(c: _Num, r: _Num) -> bool:
    cands = [(c.value, c.decimals)] + ([(c.value / 100, None)] if c.percent else [])
    refs = [(r.value, r.decimals)] + ([(r.value / 100, None)] if r.percent else [])
    if r.percent and not c.percent:
        # "0.5" answers "50%"; the candidate's decimals are compared to the reference's as written
        refs = [(r.value, r.decimals), (r.value / 100, (r.decimals + 2) if r.decimals is not None else None)]
    return any(_close(cv, cd, rv, rd) for cv, cd in cands for rv, rd in refs)


# --------------------------------------------------------------------------------------------------
# A small, safe math parser (tokens -> sympy objects; no eval anywhere)
# --------------------------------------------------------------------------------------------------

class _NotMath(ValueError):
    pass


_FUNCS = ("arcsin", "arccos", "arctan", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln",
          "exp", "abs")
_CONSTS = ("pi", "infty", "inf")
_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z]+)|(\*\*|[-+*/^()]))")
_MAX_TOKENS = 120
_MAX_EXP = 1000
_MAX_SYM_EXP = 64


def _latex_to_plain(s: str) -> str:
    """LaTeX math -> plain infix: \\frac{a}{b} -> ((a)/(b)), \\sqrt{x} -> sqrt(x), \\sqrt[n]{x},
    \\cdot/\\times -> *, \\pi -> pi, remaining braces -> parentheses."""
    s = _latex_light(s)
    for _ in range(3):
        s = _TEXT_CMD.sub(r"\1", s)
    out = []
    i = 0
    while i < len(s):
        if s.startswith("\\frac", i):
            j = i + 5
            a, j = _brace_arg(s, j)
            b, j = _brace_arg(s, j)
            out.append(f"(({_latex_to_plain(a)})/({_latex_to_plain(b)}))")
            i = j
            continue
        if s.startswith("\\sqrt", i):
            j = i + 5
            n = None
            while j < len(s) and s[j] == " ":
                j += 1
            if j < len(s) and s[j] == "[":
                k = s.find("]", j)
                if k < 0:
                    raise _NotMath("unclosed \\sqrt[")
                n, j = s[j + 1:k], k + 1
            a, j = _brace_arg(s, j)
            inner = _latex_to_plain(a)
            out.append(f"(({inner})^(1/({_latex_to_plain(n)})))" if n else f"sqrt({inner})")
            i = j
            continue
        if s[i] == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m:
                raise _NotMath(f"stray backslash in {s!r}")
            cmd = m.group(1)
            rep = {"cdot": "*", "times": "*", "div": "/", "pi": "pi", "infty": "infty", "ln": "ln",
                   "log": "log", "exp": "exp", "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot",
                   "sec": "sec", "csc": "csc", "arcsin": "arcsin", "arccos": "arccos", "arctan": "arctan"}
            if cmd not in rep:
                raise _NotMath(f"unsupported LaTeX command \\{cmd}")
            out.append(f" {rep[cmd]} ")
            i += len(cmd) + 1
            continue
        c = s[i]
        out.append({"{": "(", "}": ")", "×": "*", "·": "*", "÷": "/", "π": "pi"}.get(c, c))
        i += 1
    return "".join(out)


def _brace_arg(s: str, j: int) -> tuple[str, int]:
    while j < len(s) and s[j] == " ":
        j += 1
    if j >= len(s):
        raise _NotMath("missing argument")
    if s[j] == "{":
        end = _group_end(s, j)
        if end is None:
            raise _NotMath("unbalanced braces")
        return s[j + 1:end - 1], end
    return s[j], j + 1          # \frac34


def _tokenize(s: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    pos = 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m or m.end() == pos:
            raise _NotMath(f"unexpected character {s[pos]!r}")
        pos = m.end()
        num, word, op = m.groups()
        if num is not None:
            if len(num) > 60:
                raise _NotMath("number too long")
            toks.append(("num", num))
        elif word is not None:
            low = word
            if low in _FUNCS:
                toks.append(("func", low))
            elif low in _CONSTS:
                toks.append(("const", low))
            elif len(word) <= 3:
                toks.extend(("sym", ch) for ch in word)     # 2xy -> 2*x*y
            else:
                raise _NotMath(f"word {word!r}")
        else:
            toks.append(("op", "^" if op == "**" else op))
        if len(toks) > _MAX_TOKENS:
            raise _NotMath("expression too long")
    if not toks:
        raise _NotMath("empty")
    return toks


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary | implicit)* ;
    unary := ('+'|'-') unary | power ; power := atom ('^' unary)? ; atom := num | sym | const |
    func atom | '(' expr ')'. Implicit multiplication before a symbol, function, constant or '('."""

    def __init__(self, toks):
        import sympy

        self.sp = sympy
        self.toks = toks
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def parse(self):
        e = self.expr()
        if self.i != len(self.toks):
            raise _NotMath(f"unexpected {self.peek()[1]!r}")
        return e

    def expr(self):
        e = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            t = self.term()
            e = e + t if op == "+" else e - t
        return e

    def term(self):
        e = self.unary()
        while True:
            k, v = self.peek()
            if (k, v) in (("op", "*"), ("op", "/")):
                self.take()
                u = self.unary()
                if v == "/":
                    if u == 0:
                        raise _NotMath("division by zero")
                    e = e / u
                else:
                    e = e * u
            elif k in ("sym", "func", "const", "num") or (k, v) == ("op", "("):
                e = e * self.power()
            else:
                return e

    def unary(self):
        if self.peek() == ("op", "-"):
            self.take()
            return -self.unary()
        if self.peek() == ("op", "+"):
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek() == ("op", "^"):
            self.take()
            exp = self.unary()
            if exp.is_number and (not exp.is_finite or abs(complex(exp.evalf())) > _MAX_EXP):
                raise _NotMath("exponent too large")
            if exp.is_number and not base.is_number and abs(complex(exp.evalf())) > _MAX_SYM_EXP:
                raise _NotMath("exponent too large for a symbolic base")
            if base.is_number and exp.is_number and base.is_Integer and exp.is_Integer and \
                    abs(int(base)) > 1 and int(exp) * math.log10(abs(int(base))) > _MAX_EXP:
                raise _NotMath("power too large")
            return base ** exp
        return base

    def atom(self):
        sp = self.sp
        k, v = self.take()
        if k == "num":
            return sp.Rational(v)
        if k == "sym":
            return {"e": sp.E, "i": sp.I}.get(v) or sp.Symbol(v)
        if k == "const":
            return sp.pi if v == "pi" else sp.oo
        if k == "func":
            power = None
            if self.peek() == ("op", "^"):          # \sin^2 x = (sin x)^2
                self.take()
                power = self.atom()
            arg = self.power() if self.peek() != ("op", "(") else self.paren()
            f = {"sqrt": sp.sqrt, "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "cot": sp.cot,
                 "sec": sp.sec, "csc": sp.csc, "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan,
                 "log": sp.log, "ln": sp.log, "exp": sp.exp, "abs": sp.Abs}[v]
            return f(arg) if power is None else f(arg) ** power
        if (k, v) == ("op", "("):
            self.i -= 1
            return self.paren()
        raise _NotMath(f"unexpected {v!r}")

    def paren(self):
        if self.take() != ("op", "("):
            raise _NotMath("expected '('")
        e = self.expr()
        if self.take() != ("op", ")"):
            raise _NotMath("expected ')'")
        return e


_MATHY = re.compile(r"[\d+\-*/^=\\()]|\b[a-zA-Z]\b")


def _parse_math(s: str):
    """A sympy expression (or an (lhs, rhs) equation pair) from plain or LaTeX math, or _NotMath."""
    plain = _latex_to_plain(s.replace("$", ""))
    plain = re.sub(r"\b(\d+)\s*,\s*(\d{3})\b", r"\1\2", plain) if re.search(r"\d,\d{3}\b", plain) else plain
    if "," in plain or ";" in plain:
        raise _NotMath("a list")
    parts = plain.split("=")
    if len(parts) > 2:
        raise _NotMath("chained equation")
    exprs = [_Parser(_tokenize(p)).parse() for p in parts]
    return tuple(exprs) if len(exprs) == 2 else exprs[0]


_SAMPLE_POINTS = (0.5377, 1.8339, -2.2588, 0.8622, 0.3188, -1.3077, 2.7694)
_REL_TOL = 1e-12


def _values_at_points(exprs, syms):
    """Each expression evaluated (40 digits) at fixed sample points; points where any of them is
    undefined (division by zero, log of a negative, ...) are skipped."""
    import sympy

    rows = []
    for k in range(len(_SAMPLE_POINTS) if syms else 1):
        subs = {s: sympy.Float(_SAMPLE_POINTS[(k + j) % len(_SAMPLE_POINTS)] + 0.1 * j, 40)
                for j, s in enumerate(syms)}
        try:
            vals = [complex(e.evalf(40, subs=subs)) for e in exprs]
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if any(math.isnan(v.real) or math.isnan(v.imag) or math.isinf(abs(v)) for v in vals):
            continue
        rows.append(vals)
    return rows


def _same(x: complex, y: complex) -> bool:
    return abs(x - y) <= _REL_TOL * max(abs(x), abs(y), 1e-30) or abs(x - y) < 1e-30


def _numerically_equal(a, b) -> bool | None:
    """Do a and b agree at every sample point? None when too few points can be evaluated."""
    syms = sorted((a.free_symbols | b.free_symbols), key=lambda x: x.name)
    rows = _values_at_points([a, b], syms)
    if any(not _same(x, y) for x, y in rows):
        return False
    if len(rows) >= (3 if syms else 1):
        return True
    return None


def _proportional(a, b) -> bool | None:
    """Is a = c * b for a non-zero constant c (same equation written with a factor)?"""
    syms = sorted((a.free_symbols | b.free_symbols), key=lambda x: x.name)
    rows = [(x, y) for x, y in _values_at_points([a, b], syms) if abs(y) > 1e-12]
    if len(rows) < 3:
        return None
    c = rows[0][0] / rows[0][1]
    return abs(c) > 1e-12 and all(_same(x, c * y) for x, y in rows)


def _expressions_equal(a, b) -> bool | None:
    """Exact equality, else agreement at fixed sample points, else sympy.simplify of the difference."""
    import sympy

    if isinstance(a, tuple) != isinstance(b, tuple):
        return None
    if isinstance(a, tuple):               # equations: the same up to a non-zero constant factor
        da, db = a[0] - a[1], b[0] - b[1]
        if da == 0 or db == 0:
            return da == db
        return _proportional(da, db)
    d = a - b
    if d == 0:
        return True
    verdict = _numerically_equal(a, b)
    if verdict is not None:
        return verdict
    try:
        return True if sympy.simplify(d) == 0 else None
    except Exception:  # noqa: BLE001 (sympy raises many kinds on odd input: cannot decide)
        return None


# --------------------------------------------------------------------------------------------------
# Lists
# --------------------------------------------------------------------------------------------------

_OPEN, _CLOSE = "([{", ")]}"


def _split_list(s: str) -> tuple[str, str, list[str]] | None:
    """'(1, 2)' -> ('(', ')', ['1', '2']); None when s is not a list of two or more."""
    t = s.strip()
    t = t.replace("\\{", "{").replace("\\}", "}")
    if re.fullmatch(rf"\s*{_NUM}\s*", t) or _parse_number(t) is not None:
        return None  # 1,234 and $1,200 are numbers
    opened = closed = ""
    if len(t) >= 2 and t[0] in _OPEN and t[-1] in _CLOSE:
        # strip the outer brackets only when they enclose everything (interval brackets may differ)
        depth = 0
        ok = True
        for i, c in enumerate(t):
            if c in _OPEN:
                depth += 1
            elif c in _CLOSE:
                depth -= 1
                if depth == 0 and i != len(t) - 1:
                    ok = False
                    break
        if ok:
            opened, closed, t = t[0], t[-1], t[1:-1]
    parts, depth, cur = [], 0, ""
    for c in t:
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        if c in ",;" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    parts = [p.strip() for p in parts]
    if len(parts) < 2 or any(not p for p in parts):
        return None
    # "1,000,000" style groups inside were handled above; "3, 4" is a list
    return opened, closed, parts


_ASSIGN_RE = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(.+)$")


# --------------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------------

_CLOSED = {"yes", "no", "true", "false"}
_PRIORITY = ("string", "symbolic", "choice", "numeric")


def verify(candidate: str | None, reference: str | None) -> Verdict:
    """Does the candidate answer equal the reference? See the module docstring for the paths."""
    if reference is None or not str(reference).strip():
        return Verdict(None, "undecided")
    reference = str(reference)
    if candidate is None or not str(candidate).strip():
        return Verdict(False, "string")
    candidate = str(candidate)

    letter = _is_choice_reference(reference)
    if letter is not None:
        got = extract_choice(candidate)
        if got is not None:
            return Verdict(got == letter, "choice")
        return Verdict(None, "undecided")        # answered with option text: the options are unknown

    c, r = _prepare(candidate), _prepare(reference)
    return _compare(c, r)


def _compare(c: str, r: str, depth: int = 0) -> Verdict:
    if not c:
        return Verdict(False, "string")
    if "=" in c and "=" not in r:
        m = _ASSIGN_RE.match(c)
        if m:
            c = m.group(1).strip()
    elif "=" in r and "=" not in c:
        m = _ASSIGN_RE.match(r)
        if m:
            r = m.group(1).strip()

    if depth == 0:
        lc, lr = _split_list(c), _split_list(r)
        if lc or lr:
            return _compare_lists(c, r, lc, lr)

    nc, nr = _parse_number(c), _parse_number(r)
    if nc is not None and nr is not None:
        return Verdict(_numbers_match(nc, nr), "numeric")

    if _MATHY.search(c) and _MATHY.search(r):
        try:
            ec = _parse_math(c) if nc is None else _parse_math(_num_text(nc))
            er = _parse_math(r) if nr is None else _parse_math(_num_text(nr))
        except (_NotMath, RecursionError, ValueError, TypeError, ZeroDivisionError):
            ec = er = None
        if ec is not None and er is not None:
            try:
                eq = _expressions_equal(ec, er)
            except Exception:  # noqa: BLE001 (sympy on hostile input: cannot decide)
                eq = None
            if eq is False and nc is not None and not isinstance(er, tuple) and er.is_number:
                # a decimal candidate against an irrational reference: the precision rule
                try:
                    approx = Fraction(str(er.evalf(40)))
                    if nc.decimals is not None and nc.decimals >= 2 and _round_to(approx, nc.decimals) == nc.value:
                        eq = True
                except (ValueError, TypeError):
                    pass
            if eq is not None:
                return Verdict(eq, "symbolic")
            return Verdict(None, "undecided")

    a, b = normalize_answer(c), normalize_answer(r)
    if a == b and a:
        return Verdict(True, "string")
    if a in _CLOSED and b in _CLOSED:
        return Verdict(False, "string")
    return Verdict(None, "undecided")


def _num_text(n: _Num) -> str:
    return f"({n.value.numerator})/({n.value.denominator})" if n.value.denominator != 1 else str(n.value.numerator)


def _compare_lists(c, r, lc, lr) -> Verdict:
    ec = lc[2] if lc else [c]
    er = lr[2] if lr else [r]
    numeric_like = all(_parse_number(x) is not None for x in ec + er)
    if len(ec) != len(er):
        return Verdict(False, "numeric") if numeric_like else Verdict(None, "undecided")
    if lc and lr and lc[0] and lr[0] and (lc[0], lc[1]) != (lr[0], lr[1]) and numeric_like:
        return Verdict(False, "numeric")      # (1, 2) vs [1, 2]: different intervals
    methods = []
    undecided = False
    for x, y in zip(ec, er):
        v = _compare(x, y, depth=1)
        if v.match is False:
            return v
        if v.match is None:
            undecided = True
        else:
            methods.append(v.method)
    if undecided:
        return Verdict(None, "undecided")
    return Verdict(True, next(m for m in _PRIORITY if m in methods))


def answers_match(candidate: str | None, reference: str | None) -> bool | None:
    """True / False, or None when it cannot be decided without a model."""
    return verify(candidate, reference).match


# --------------------------------------------------------------------------------------------------
# Whole responses: extraction, answer kinds, verification with a model fallback
# --------------------------------------------------------------------------------------------------

_CONCLUSION_RE = re.compile(r"<CONCLUSION>(.*?)</CONCLUSION>", re.S | re.I)
_FINAL_PHRASE_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|would be|should be|:|=)\s*:?\s*(?P<ans>[^\n]+)", re.I)


def _tidy(ans: str) -> str:
    ans = ans.strip().strip("*").strip()
    ans = re.sub(r"^[:\-\s]+", "", ans)
    return ans.rstrip(".").strip().strip("*").strip()


def extract_final_answer(response: str | None, short_chars: int = 80) -> str | None:
    """The final answer of a model response, or None when it gives none.

    Only the part after ``</think>`` counts when there is one (a response cut off inside its
    reasoning has no answer). In that part: the last ``\\boxed{...}``; else the last
    ``<CONCLUSION>...</CONCLUSION>`` (LLaVA-CoT); else what follows the last "answer is" /
    "Answer:" on its line; else the whole part when it is one short line (a bare answer)."""
    if not response or not response.strip():
        return None
    text = response
    if "<think>" in text and "</think>" not in text:
        return None
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    text = text.strip()
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    if re.search(r"\\(?:boxed|fbox)\s*\{", text):
        return None                                    # a \boxed{ that never closes: truncated
    concl = _CONCLUSION_RE.findall(text)
    if concl:
        inner = concl[-1].strip()
        return extract_final_answer(inner, short_chars) or (inner or None)
    phrases = list(_FINAL_PHRASE_RE.finditer(text))
    if phrases:
        ans = _tidy(phrases[-1].group("ans"))
        return ans or None
    if "\n" not in text and len(text) <= short_chars:
        return _tidy(text) or None
    return None


def answer_kind(reference: str | None) -> str:
    """What a reference answer is, for routing: ``choice`` (an option letter), ``numeric``,
    ``symbolic`` (an expression or equation), ``list``, ``short_text`` (at most five words) or
    ``long_text`` (free text no rule can check; only a model can)."""
    if reference is None or not str(reference).strip():
        return "long_text"
    ref = str(reference)
    if _is_choice_reference(ref) is not None:
        return "choice"
    r = _prepare(ref)
    m = _ASSIGN_RE.match(r)
    if m and _parse_number(m.group(1).strip()) is not None:
        r = m.group(1).strip()                        # "x = 3" is the number 3
    if _split_list(r) is not None:
        return "list"
    if _parse_number(r) is not None:
        return "numeric"
    if _MATHY.search(r) and re.search(r"[\d=+\-*/^\\]", r):
        try:
            _parse_math(r)
            return "symbolic"
        except (_NotMath, RecursionError, ValueError, TypeError, ZeroDivisionError):
            pass
    return "short_text" if len(normalize_answer(r).split()) <= 5 else "long_text"


@dataclass(frozen=True)
class ResponseCheck:
    """One response against its reference: the extracted answer, the verdict and the path that
    decided it (``numeric``/``symbolic``/``choice``/``string`` by rule, ``model``, ``no_answer``,
    or ``undecided`` when no rule decides and no model was asked or it gave no usable answer)."""

    extracted: str | None
    match: bool | None
    decided_by: Decision

    def to_dict(self) -> dict:
        return {"extracted": self.extracted, "match": self.match, "decided_by": self.decided_by}


ModelCheck = Callable[[list[tuple[str, str, str]]], list["bool | None"]]


def verify_responses(items: list[tuple[str | None, str, str]], model: ModelCheck | None = None) -> list[ResponseCheck]:
    """Check ``(response, reference, question)`` items: extract each final answer and verify it by
    rule; the ones no rule decides go, in one batch, to ``model`` -- a callable taking
    ``(question, reference, candidate)`` triples and returning True / False / None each (None:
    the model gave no usable verdict) -- when one is given."""
    out: list[ResponseCheck | None] = []
    pending: list[int] = []
    for i, (response, reference, _question) in enumerate(items):
        cand = extract_final_answer(response)
        if cand is None:
            out.append(ResponseCheck(None, False, "no_answer"))
            continue
        v = verify(cand, reference)
        if v.match is None:
            out.append(ResponseCheck(cand, None, "undecided"))
            pending.append(i)
        else:
            out.append(ResponseCheck(cand, v.match, v.method))
    if model is not None and pending:
        verdicts = model([(items[i][2] or "", str(items[i][1]), out[i].extracted or "") for i in pending])
        if len(verdicts) != len(pending):
            raise ValueError(f"model check returned {len(verdicts)} verdicts for {len(pending)} answers")
        for i, m in zip(pending, verdicts):
            if m is not None:
                out[i] = ResponseCheck(out[i].extracted, bool(m), "model")
    return [o for o in out if o is not None]
