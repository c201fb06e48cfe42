"""Parser: realistic GRM outputs, broken ones, property tests and a linear-time check."""
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrm.parser import Judgment, Principle, parse_judgment, split_principles

RELEASED_STYLE = """Specific Criteria: 1. **Depth** (Weight: 30%): covers the mechanism. 2. **Accuracy** (Weight: 50%): facts are right. 3. **Clarity** (Weight: 20%): easy to read.
Analysis: - **Response 1**: shallow but correct. - **Response 2**: deeper and correct.
Scores: \\boxed{8, 9}"""

MARKDOWN = """### Specific Criteria:
1. **Correctness** [40%]: the code must compile.
2. **Efficiency** (weight 0.35): runs in O(n).
3. **Style** (weight = 25 %): idiomatic.

### Analysis:
- **Response 1**: Correctness: 9/10, Efficiency: 4/10. Compiles but quadratic.
- **Response 2**: Correctness: 3/10. Does not compile.

### Scores:
\\boxed{7, 3}"""

BOLD = """**Specific Criteria:** - Safety (Weight: 60%)
- Helpfulness (Weight: 40%)
**Analysis:** Response 1 refuses politely. Response 2 complies with a harmful request.
**Scores:** \\boxed{ 9 , 2 }."""

QUOTES_TEMPLATE = """Specific Criteria: Accuracy.
Analysis: The format asks for \\boxed{x, x}; Response 1 is right, Response 2 is wrong.
Depth: \\boxed{6} and \\boxed{4} per criterion.
Scores: \\boxed{8,2}."""


@pytest.mark.parametrize("text, n, scores", [
    (RELEASED_STYLE, 2, [8, 9]),
    (MARKDOWN, 2, [7, 3]),
    (BOLD, 2, [9, 2]),
    (QUOTES_TEMPLATE, 2, [8, 2]),
    ("Scores: \\boxed{8, 9, 10, 1}", 4, [8, 9, 10, 1]),
    ("Scores: \\boxed{7}", 1, [7]),
    ("Scores: \\boxed{\n8,\n9\n}", 2, [8, 9]),
    ("\\boxed{1, 2} then final \\boxed{3, 4}", 2, [3, 4]),
    ("\\boxed{{}} noise \\boxed{5, 6}", 2, [5, 6]),  # nested braces in an earlier box
])
def test_valid_outputs(text, n, scores):
    j = parse_judgment(text, n)
    assert j.valid and j.reason is None
    assert j.scores == scores


def test_principles_and_analysis_of_released_style():
    j = parse_judgment(RELEASED_STYLE, 2)
    assert [p.weight for p in j.principles] == [0.3, 0.5, 0.2]
    assert j.principles[0].text.startswith("**Depth** (Weight: 30%)")
    assert j.principles[2].text.endswith("easy to read.")
    assert j.analysis == "- **Response 1**: shallow but correct. - **Response 2**: deeper and correct."


def test_principles_and_analysis_with_markdown_headers():
    j = parse_judgment(MARKDOWN, 2)
    assert [p.weight for p in j.principles] == [0.4, 0.35, 0.25]
    assert j.principles[1].text == "**Efficiency** (weight 0.35): runs in O(n)."
    assert j.analysis.startswith("- **Response 1**: Correctness: 9/10")
    assert j.analysis.endswith("Does not compile.")
    b = parse_judgment(BOLD, 2)
    assert [(p.text, p.weight) for p in b.principles] == [("Safety (Weight: 60%)", 0.6), ("Helpfulness (Weight: 40%)", 0.4)]
    assert b.analysis.startswith("Response 1 refuses") and "Scores" not in b.analysis


def test_one_line_output_is_split_into_sections():
    j = parse_judgment("Specific Criteria: 1. Tone. 2. Facts. Analysis: both fine. Scores: \\boxed{5, 5}", 2)
    assert [p.text for p in j.principles] == ["Tone.", "Facts."]
    assert all(p.weight is None for p in j.principles)
    assert j.analysis == "both fine."


@pytest.mark.parametrize("criteria, weights", [
    ("1. A (Weight: 30%) 2. B (Weight: 70%)", [0.3, 0.7]),
    ("1. A, weight 0.3\n2. B, weight 0.7", [0.3, 0.7]),
    ("- A [25%]\n- B (75%)\n- C", [0.25, 0.75, None]),
    ("1. A (Weight: 30) 2. B (Weight: 1)", [0.3, 1.0]),
    ("1. Version 3. support (weight: 20%) 2. docs", [0.2, None]),  # "3." is out of sequence
    ("just one criterion, weight 0.5", [0.5]),
    ("", []),
])
def test_weights(criteria, weights):
    assert [p.weight for p in split_principles(criteria)] == weights


@pytest.mark.parametrize("text, n, reason", [
    ("Scores: 8, 9", 2, "no boxed"),
    ("", 2, "no boxed"),
    ("Scores: \\boxed{8, 9", 2, "truncated"),
    ("Scores: \\boxed{8, 9} and later \\boxed{7,", 2, "truncated"),
    ("Scores: \\boxed{}", 2, "empty"),
    ("Scores: \\boxed{ , }", 2, "empty"),
    ("Scores: \\boxed{8}", 2, "wrong count"),
    ("Scores: \\boxed{8, 9, 7}", 2, "wrong count"),
    ("Scores: \\boxed{8, 11}", 2, "out of range"),
    ("Scores: \\boxed{0, 9}", 2, "out of range"),
    ("Scores: \\boxed{-1, 9}", 2, "out of range"),
    ("Scores: \\boxed{8.5, 9}", 2, "not an integer"),
    ("Scores: \\boxed{8/10, 9/10}", 2, "not an integer"),
    ("Scores: \\boxed{eight, nine}", 2, "not an integer"),
    ("Scores: \\boxed{+8, 9}", 2, "not an integer"),
    ("Scores: \\boxed{08, 9}", 2, "not an integer"),
    ("Scores: \\boxed{８, 9}", 2, "not an integer"),
    ("Scores: \\boxed{8, 9,}", 2, "not an integer"),
    ("Scores: \\boxed{8 9}", 2, "not an integer"),
    ("Scores: \\boxed{\\text{8}, 9}", 2, "not an integer"),
    ("Scores: \\boxed{" + "9" * 5000 + ", 9}", 2, "out of range"),
    (None, 2, "not text"),
    (b"\\boxed{8, 9}", 2, "not text"),
])
def test_invalid_outputs(text, n, reason):
    j = parse_judgment(text, n)
    assert not j.valid and j.scores is None
    assert j.reason == reason


def test_range_is_configurable_for_the_single_response_prompt():
    assert parse_judgment("Scores: \\boxed{0}", 1, lo=0, hi=1).scores == [0]
    assert parse_judgment("Scores: \\boxed{1}", 1, lo=0, hi=1).scores == [1]
    assert parse_judgment("Scores: \\boxed{7}", 1, lo=0, hi=1).reason == "out of range"


@pytest.mark.parametrize("n, lo, hi", [(0, 1, 10), (True, 1, 10), (2, 5, 4)])
def test_caller_errors_raise(n, lo, hi):
    with pytest.raises(ValueError):
        parse_judgment("\\boxed{1}", n, lo, hi)


def test_judgment_is_a_plain_record():
    j = Judgment([8, 9], [Principle("Depth", 0.3)], "ok")
    assert j.valid and j.principles[0].weight == 0.3 and j.reason is None
    assert not Judgment(None, reason="no boxed").valid


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=400), st.integers(1, 5))
def test_never_raises_on_arbitrary_text(text, n):
    j = parse_judgment(text, n)
    assert (j.scores is None) == (j.reason is not None)
    if j.valid:
        assert len(j.scores) == n and all(1 <= s <= 10 for s in j.scores)


BOX_ALPHABET = st.sampled_from(list("\\boxed{}, 0123456789-+.#*:\nScores Analysis Specific Criteria Weight%"))


@settings(max_examples=300, deadline=None)
@given(st.lists(BOX_ALPHABET, max_size=200).map("".join), st.integers(1, 4))
def test_never_raises_on_box_like_text(text, n):
    j = parse_judgment(text, n)
    assert isinstance(j, Judgment) and (j.valid or j.reason)


TEMPLATES = [
    "Specific Criteria: 1. **Depth** (Weight: 30%): ok.\nAnalysis: - **Response 1**: fine.\nScores: {box}",
    "### Specific Criteria:\n- Accuracy [50%]\n\n### Analysis:\nDepth: 7/10.\n\n### Scores:\n{box}.",
    "**Analysis:** quoting \\boxed{{x, x}} from the format.\n**Scores:** {box}",
    "{box}",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=8), st.sampled_from(TEMPLATES),
       st.sampled_from([", ", ",", " , "]), st.booleans())
def test_round_trip(scores, template, sep, padded):
    inner = sep.join(map(str, scores))
    box = "\\boxed{" + (f" {inner} " if padded else inner) + "}"
    assert parse_judgment(template.format(box=box), len(scores)).scores == scores


@pytest.mark.parametrize("adversarial", [
    "\\boxed{" * 150_000,
    "{" * 1_000_000,
    "\\boxed{" + "{" * 1_000_000,
    "Specific Criteria:" * 60_000,
    "### Analysis **:" * 60_000,
    "1. " * 330_000,
    "weight " * 140_000 + "30%",
    "(" * 500_000 + "30 %",
    "\\boxed{" + "8," * 500_000 + "}",
    "\n -" * 330_000 + "Scores",
], ids=lambda s: repr(s[:12]))
def test_linear_time_on_a_megabyte(adversarial):
    start = time.perf_counter()
    j = parse_judgment(adversarial, 2)
    assert time.perf_counter() - start < 2.0
    assert not j.valid
