"""Answer verification without a model (judges/answers.py), as a table of real answer forms.

``verify(candidate, reference)`` says whether the candidate's final answer equals the reference and
which path decided: ``numeric``, ``symbolic`` (sympy, through a parser that never calls eval),
``choice`` (multiple-choice letters), ``string`` (normalised text), or ``undecided`` (match None:
free text that only a model judge can compare).
"""
from __future__ import annotations

import builtins

import pytest

from judges.answers import Verdict, answers_match, extract_boxed, extract_choice, normalize_answer, verify

MATCH = [  # (candidate, reference, method)
    # integers, decimals, separators, signs
    ("42", "42", "numeric"),
    ("42.0", "42", "numeric"),
    ("1,234,567", "1234567", "numeric"),
    ("1,234.5", "1234.50", "numeric"),
    ("-3", "\u22123", "numeric"),
    ("+7", "7", "numeric"),
    ("five", "5", "numeric"),
    # fractions
    ("3/4", "0.75", "numeric"),
    (r"\frac{3}{4}", "0.75", "numeric"),
    (r"\dfrac{3}{4}", "3/4", "numeric"),
    (r"\dfrac34", "0.75", "numeric"),
    (r"-\frac{1}{2}", "-0.5", "numeric"),
    ("1 1/2", "3/2", "numeric"),
    (r"2\frac{1}{4}", "2.25", "numeric"),
    # percentages
    ("50%", "50", "numeric"),
    ("50%", "0.5", "numeric"),
    (r"12.5\%", "0.125", "numeric"),
    ("0.5", "50%", "numeric"),
    ("25 percent", "25%", "numeric"),
    # units, currency, degrees
    (r"5 \text{cm}", "5", "numeric"),
    (r"5\,\mathrm{cm}^2", "5", "numeric"),
    ("12 cm", "12", "numeric"),
    (r"30^\circ", "30", "numeric"),
    ("30°", "30 degrees", "numeric"),
    ("$1,200", "1200", "numeric"),
    ("3 hours", "3", "numeric"),
    # scientific notation
    ("1.2e3", "1200", "numeric"),
    (r"1.2 \times 10^{3}", "1200", "numeric"),
    ("6.02E23", r"6.02\times10^{23}", "numeric"),
    ("1e-3", "0.001", "numeric"),
    # precision: a reference with d decimals accepts a more precise candidate that rounds to it
    ("3.142", "3.14", "numeric"),
    ("0.33", "1/3", "numeric"),
    ("0.667", r"\frac{2}{3}", "numeric"),
    ("1.414", r"\sqrt{2}", "symbolic"),
    # model output around the answer
    (r"So the final answer is $\boxed{\frac{1}{2}}$.", "0.5", "numeric"),
    ("The answer is 42.", "42", "numeric"),
    ("Answer: 7", "7", "numeric"),
    ("x = 3", "3", "numeric"),
    (r"\left( 1, 2 \right)", "(1, 2)", "numeric"),
    # expressions (sympy)
    ("2x+2", "2(x+1)", "symbolic"),
    ("x^2-1", "(x-1)(x+1)", "symbolic"),
    (r"\frac{x}{2}", "x/2", "symbolic"),
    (r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}", "symbolic"),
    (r"\sqrt[3]{8}", "2", "symbolic"),
    ("2 pi", r"2\pi", "symbolic"),
    (r"\frac{\pi}{2}", "pi/2", "symbolic"),
    ("a+b", "b+a", "symbolic"),
    ("y = 2x + 1", "y = 1 + 2x", "symbolic"),
    ("2y = 4x + 2", "y = 2x + 1", "symbolic"),
    (r"\sin^2 x + \cos^2 x", "1", "symbolic"),
    ("3+4i", "4i+3", "symbolic"),            # i is the imaginary unit, e is Euler's number
    ("e^(i pi)", "-1", "symbolic"),
    ("(x+1)^60", "(1+x)^60", "symbolic"),
    # lists and tuples, element by element
    ("(1, 2)", "(1,2)", "numeric"),
    ("[3, 4, 5]", "[3,4,5]", "numeric"),
    ("1, 2, 3", "1,2,3", "numeric"),
    (r"(\frac{1}{2}, 3)", "(0.5, 3)", "numeric"),
    ("(x+1, 2)", "(1+x, 2)", "symbolic"),
    # multiple choice
    ("B", "B", "choice"),
    ("(B)", "B", "choice"),
    ("B.", "(B)", "choice"),
    ("b", "B", "choice"),
    ("Answer: b", "B", "choice"),
    ("The answer is C.", "C", "choice"),
    ("the correct option is (D) because the bar is tallest", "D", "choice"),
    (r"\boxed{E}", "E", "choice"),
    ("(A) 42 cm", "A", "choice"),
    ("I would pick **F**.", "F", "choice"),
    ("C", "C. the red one", "choice"),
    # normalised text
    ("Blue", "blue.", "string"),
    ("the Eiffel Tower", "Eiffel tower", "string"),
    ("  New   York ", "new york", "string"),
    ("Yes.", "yes", "string"),
    (r"\text{dog}", "Dog", "string"),
]

NO_MATCH = [  # (candidate, reference, method): decided, and not a match
    ("41", "42", "numeric"),
    ("5%", "50", "numeric"),
    ("0.05", "50%", "numeric"),
    ("3/4", "4/3", "numeric"),
    (r"\frac{3}{4}", "0.7", "numeric"),
    ("1,234", "1.234", "numeric"),
    ("3.1", "3.14", "numeric"),          # less precise than the reference
    ("3.14", "3.1416", "numeric"),
    ("0.3", "1/3", "numeric"),           # one decimal is not an approximation of 1/3
    ("1.2e3", "120", "numeric"),
    ("-3", "3", "numeric"),
    ("2x+1", "2(x+1)", "symbolic"),
    ("x^2+1", "(x-1)(x+1)", "symbolic"),
    ("x/2", "2/x", "symbolic"),
    ("y = 2x + 1", "y = 2x - 1", "symbolic"),
    (r"\sqrt{3}", r"\sqrt{2}", "symbolic"),
    ("1.41", r"\sqrt{3}", "symbolic"),
    ("3+4i", "3-4i", "symbolic"),
    ("sqrt(x^2)", "x", "symbolic"),          # not equal for negative x
    ("x = 3", "x = 4", "symbolic"),
    ("(x+1)^60", "(x+2)^60", "symbolic"),
    ("(1, 2)", "(2, 1)", "numeric"),     # ordered
    ("(1, 2)", "(1, 2, 3)", "numeric"),
    ("[1, 2)", "(1, 2)", "numeric"),     # intervals: brackets matter
    ("C", "B", "choice"),
    ("(A)", "D", "choice"),
    ("The answer is A.", "B", "choice"),
    ("no", "Yes", "string"),
    ("false", "true", "string"),
    ("", "42", "string"),
    (None, "42", "string"),
]

UNDECIDED = [  # (candidate, reference): needs a model, or cannot be checked safely
    ("blue", "red"),                     # free text: synonyms possible, no model here
    ("a red car", "red automobile"),
    ("Paris", "Paris, France"),
    ("7", "seven apples"),
    ("42 cm", "B"),                      # option text against an option letter: options unknown
    ("the answer is a cat", "A"),        # lower-case 'a' in a sentence is an article, not option A
    ("42", ""),
    ("42", None),
    ("10^9999", "1"),                    # refuses to build huge numbers
    ("9^9^9", "1"),
]


@pytest.mark.parametrize("candidate, reference, method", MATCH)
def test_equivalent_forms_match(candidate, reference, method):
    assert verify(candidate, reference) == Verdict(True, method)
    assert answers_match(candidate, reference) is True


@pytest.mark.parametrize("candidate, reference, method", NO_MATCH)
def test_different_answers_do_not_match(candidate, reference, method):
    assert verify(candidate, reference) == Verdict(False, method)
    assert answers_match(candidate, reference) is False


@pytest.mark.parametrize("candidate, reference", UNDECIDED)
def test_undecidable_without_a_model(candidate, reference):
    assert verify(candidate, reference) == Verdict(None, "undecided")
    assert answers_match(candidate, reference) is None


@pytest.mark.parametrize("text, expected", [
    (r"\boxed{42}", "42"),
    (r"so $\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
    (r"first \boxed{1}, finally \boxed{2}", "2"),
    (r"\boxed{ \{1, 2\} }", r"\{1, 2\}"),
    (r"\boxed{a_{i}^{2}}", "a_{i}^{2}"),
    (r"\boxed {x}", "x"),
    (r"\fbox{7}", "7"),
    (r"\boxed{1} then \boxed{2", None),      # the last one is cut off: no answer, not the earlier one
    ("no box here", None),
    ("", None),
    (None, None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(B)", "B"), ("[c]", "C"), ("D.", "D"), ("b", "B"), ("  (h)  ", "H"),
    ("Answer: b", "B"), ("answer: (C)", "C"), ("The answer is C", "C"), ("The answer is C because of X", "C"),
    ("So the correct answer is option D.", "D"), ("Option (A)", "A"), ("**E**", "E"),
    (r"$\boxed{F}$", "F"), (r"\boxed{\text{(G)}}", "G"), ("(A) 3 cm", "A"), ("C. The dog", "C"),
    ("I think (B) fits best.", "B"),
    ("the answer is a cat", None), ("A cat sits on a mat.", None), ("I", None), ("(I)", None),
    ("Hello", None), ("", None), (None, None), ("(A) or (B)? hard to say", "A"),
])
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  An   apple, a day. ", "apple day"),
    (r"$\text{Blue}$", "blue"),
    ("3.5 kg", "3.5 kg"),
    ("1,000 people", "1,000 people"),
    ("Rock-and-roll", "rock and roll"),
    ("", ""),
    (None, ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('echo pwned')",
    "exec('import os')",
    "lambda: 1",
    "().__class__.__bases__[0].__subclasses__()",
    "x" * 10_000,
    "(" * 500 + "2" + ")" * 500,
    "2^2^2^2^2^2",
    r"\frac{1}{0}",
    "1/0",
])
def test_never_evaluates_code(monkeypatch, hostile):
    """The symbolic path builds sympy objects from tokens: eval/exec and sympy's string parsers
    (which call eval) are never used, and odd input is simply undecided or not equal."""
    def forbidden(*a, **k):
        raise AssertionError("eval/exec called")

    import sympy
    import sympy.parsing.sympy_parser as sp_parser

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(sp_parser, "parse_expr", forbidden)
    monkeypatch.setattr(sympy, "sympify", forbidden)
    v = verify(hostile, "1")
    assert v.match in (None, False)
    verify("2x+2", "2(x+1)")   # the real symbolic path runs under the same guard
    assert verify("2x+2", "2(x+1)") == Verdict(True, "symbolic")
