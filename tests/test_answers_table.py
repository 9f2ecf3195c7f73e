"""Whole model responses -> final answer -> verdict, on real-world answer forms.

``judges.answers.verify_responses`` is what the difficulty stage runs on every policy sample: it
extracts the final answer (``\\boxed{}`` after ``</think>``, LLaVA-CoT's ``<CONCLUSION>``, "the
answer is ...", a bare short answer), verifies it by rule (numbers and expressions by math
equivalence, choice letters, normalised strings) and records which path decided. Answers no rule
can decide stay ``undecided`` here; with a model check they go to the answer_verification judge
(tests/judge_tests/test_instruction_pipeline.py runs that path on a real engine).
"""
from __future__ import annotations

import pytest

from judges.answers import answer_kind, extract_final_answer, verify_responses

T = r"<think>" "\nLet me work it out step by step.\n" r"</think>" "\n"

TABLE = [  # (response, reference, extracted, match, decided_by)
    # fractions, LaTeX fractions, mixed numbers
    (T + r"The shaded part is $\boxed{\frac{3}{4}}$.", "0.75", r"\frac{3}{4}", True, "numeric"),
    (T + r"So the probability is \boxed{\dfrac{1}{3}}.", "1/3", r"\dfrac{1}{3}", True, "numeric"),
    ("The answer is 3/4.", r"\frac{3}{4}", "3/4", True, "numeric"),
    (r"Final answer: $1\frac{1}{2}$", "1.5", r"$1\frac{1}{2}$", True, "numeric"),
    (T + r"\boxed{\frac{2}{3}}", "0.6", r"\frac{2}{3}", False, "numeric"),
    # units and currency
    (T + r"The perimeter is \boxed{20\text{ cm}}.", "20", r"20\text{ cm}", True, "numeric"),
    ("The answer is 12 cm.", "12 centimeters", "12 cm", True, "numeric"),
    (T + r"\boxed{\$1,250}", "1250", r"\$1,250", True, "numeric"),
    (T + r"The angle is \boxed{30^\circ}.", "30 degrees", r"30^\circ", True, "numeric"),
    ("Answer: 5 kg", "7 kg", "5 kg", False, "numeric"),
    # percentages
    (T + r"\boxed{25\%}", "0.25", r"25\%", True, "numeric"),
    ("So the answer is 12.5%.", "12.5", "12.5%", True, "numeric"),
    ("The answer is 40%", "0.5", "40%", False, "numeric"),
    # scientific notation
    (T + r"\boxed{3 \times 10^{8}}", "300000000", r"3 \times 10^{8}", True, "numeric"),
    ("The answer is 6.02e23.", r"6.02\times10^{23}", "6.02e23", True, "numeric"),
    (T + r"\boxed{1.5 \times 10^{-3}}", "0.0015", r"1.5 \times 10^{-3}", True, "numeric"),
    # multiple-choice letters
    (T + r"The correct option is \boxed{C}.", "C", "C", True, "choice"),
    ("The answer is (B).", "B", "(B)", True, "choice"),
    ("Answer: (A) 12 cm", "(B) 24 cm", "(A) 12 cm", False, "choice"),
    ("<CONCLUSION>The answer is D.</CONCLUSION>", "D", "D", True, "choice"),
    (T + r"\boxed{\text{(b)}}", "B", r"\text{(b)}", True, "choice"),
    # lists and tuples
    (T + r"The roots are \boxed{2, 3}.", "3, 2", "2, 3", False, "numeric"),   # order matters
    (T + r"\boxed{(1, 2)}", "(1,2)", "(1, 2)", True, "numeric"),
    ("The answer is [1/2, 0.25]", r"[\frac{1}{2}, \frac{1}{4}]", "[1/2, 0.25]", True, "numeric"),
    # expressions and equations
    (T + r"\boxed{2(x+1)}", "2x + 2", "2(x+1)", True, "symbolic"),
    (T + r"\boxed{y = 2x + 1}", "y = 1 + 2x", "y = 2x + 1", True, "symbolic"),
    (T + r"\boxed{x = 4}", "4", "x = 4", True, "numeric"),
    (T + r"\boxed{\sqrt{2}}", "1.414", r"\sqrt{2}", False, "symbolic"),     # the reference is less precise
    # words and closed answers
    ("Tokyo", "tokyo", "Tokyo", True, "string"),
    ("The answer is yes.", "No", "yes", False, "string"),
    ("Five", "5", "Five", True, "numeric"),
    # nothing to verify
    ("<think>I am still thinking about", "4", None, False, "no_answer"),
    (T, "4", None, False, "no_answer"),
    ("It could be many things.\nHard to say which.\nMaybe several.", "4", None, False, "no_answer"),
    (T + r"So \boxed{4", "4", None, False, "no_answer"),
    # free text no rule decides: a model judge must
    ("The answer is the capital city of Japan.", "Tokyo", "the capital city of Japan", None, "undecided"),
]


@pytest.mark.parametrize("response, reference, extracted, match, decided_by", TABLE)
def test_response_table(response, reference, extracted, match, decided_by):
    (check,) = verify_responses([(response, reference, "question")])
    assert check.extracted == extracted
    assert (check.match, check.decided_by) == (match, decided_by), check


def test_extraction_reads_only_the_part_after_the_reasoning():
    assert extract_final_answer(r"<think>maybe \boxed{3}?</think> No: the answer is \boxed{4}.") == "4"
    assert extract_final_answer(r"<think>\boxed{3}</think>") is None


@pytest.mark.parametrize("reference, kind", [
    ("B", "choice"), ("(C)", "choice"), ("3/4", "numeric"), (r"\frac{1}{2}", "numeric"), ("50%", "numeric"),
    ("12 cm", "numeric"), ("1.2e3", "numeric"), ("x = 3", "numeric"), ("2x+1", "symbolic"), ("y = 2x + 1", "symbolic"),
    ("(1, 2)", "list"), ("Tokyo", "short_text"), ("a red car", "short_text"),
    ("The car on the left is red and the one on the right is blue", "long_text"), ("", "long_text"),
])
def test_answer_kinds(reference, kind):
    assert answer_kind(reference) == kind


def test_model_check_decides_only_what_rules_cannot():
    """The fallback gets exactly the undecided answers, with their question and reference, and
    its verdicts are recorded as decided by the model; a None verdict stays undecided."""
    asked = []

    def model(triples):
        asked.extend(triples)
        return [True, None]

    checks = verify_responses([(r"\boxed{4}", "4", "q1"), ("It is the big one.", "the largest", "q2"),
                               ("Some text", "Paris", "q3")], model=model)
    assert asked == [("q2", "the largest", "It is the big one"), ("q3", "Paris", "Some text")]
    assert [(c.match, c.decided_by) for c in checks] == [(True, "numeric"), (True, "model"), (None, "undecided")]
