"""Prompts: the default GRM prompt byte for byte (GRM_SPEC §1) and its variants."""
from pathlib import Path

import pytest

from minigrm import prompts
from minigrm.parser import parse_judgment

# Transcribed from the paper's template (GRM_SPEC.md §1) with context "What is 2+2?" and the
# responses "4" and "five". Typos and curly quotes are part of the format.
EXPECTED_TWO = r'''You are a skilled little expert at scoring responses. You should evaluate given responses based on the given judging criteria.
Given the context of the conversation (the last round is the User’s query) and multiple responses from the Assistant, you need to refer to the [General Evaluation Criteria] to score the responses. Based on the general evaluation criteria, state potential other specific criteria to the query, the weights of different criteria, and then provide an overall comprehensive score upon them.
Each score is an integer between 1 and 10, with a higher score indicating that the response meets the relevant criteria more closely. For example, a score of 1 means the response does not meet the criteria at all, a score of 6 means the response meets only some parts, and a score of 10 means the response perfectly meets the evaluation criteria.
Before scoring, please analyze step by step. Your scoring needs to be as strict as possible.

#### Evaluation Criteria ####
1. Instruction Adherence:
 - Fully Adhered (9-10 points): The response fully complies with all instructions and requirements of the question.
 - Partially Adhered (6-8 points): The response meets most of the instructions but has some omissions or misunderstandings.
 - Basically Adhered (3-5 points): The response meets some instructions, but the main requirements are not fulfilled.
 - Not Adhered (1-2 points): The response does not meet any instructions.
 Example: If the question requires three examples and the response provides only one, it falls under “Partially Adhered.”
2. Usefulness:
 - Highly Useful (9-10 points): The response provides comprehensive and accurate information, fully addressing the issue.
 - Useful but Incomplete (6-8 points): The response provides some useful information, but lacks details or accuracy.
 - Limited Usefulness (3-5 points): The response offers little useful information, with most content being irrelevant or incorrect.
 - Useless or Incorrect (1-2 points): The response is completely irrelevant or incorrect.
 Example: If there are factual errors in the response but the overall direction is correct, it falls under “Useful but Incomplete.”
3. Level of Detail:
 - Very Detailed (9-10 points): The response includes ample details covering all aspects of the issue.
 - Detailed but Slightly Lacking (6-8 points): The response is fairly detailed but misses some important details.
 - Basically Detailed (3-5 points): The response provides some details but is not thorough enough overall.
 - Not Detailed (1-2 points): The response is very brief and lacks necessary details.
 Example: If the response provides only a simple conclusion without an explanation, it falls under “Not Detailed.”
4. Relevance:
 - Highly Relevant (9-10 points): The response is highly relevant to the question, with information closely aligned with the topic.
 - Generally Relevant (6-8 points): The response is generally relevant but includes some unnecessary information.
 - Partially Relevant (3-5 points): The response has a lot of content that deviates from the topic.
 - Not Relevant (1-2 points): The response is completely irrelevant.
 Example: If the response strays from the topic but still provides some relevant information, it falls under “Partially Relevant.”

#### Conversation Context ####
What is 2+2?

#### Responses to be Scored ####
[The Begin of Response 1]
4
[The End of Response 1]
[The Begin of Response 2]
five
[The End of Response 2]

#### Output Format Requirements ####
Output with three lines
Specific Criteria: <Other potential criteria specific to the query and the context, and the weights of each criteria>.
Analysis: <Compare different responses based on given Criteria>.
Scores: <the overall comprehensive score of all responses in order, separate by comma in the boxed, e.g., \boxed{x, x} if there exists 2 responeses>.'''

MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]


def test_default_prompt_matches_the_paper_byte_for_byte():
    assert prompts.grm_prompt("What is 2+2?", ["4", "five"]) == EXPECTED_TWO


@pytest.mark.parametrize("fragment", [
    "skilled little expert", "the User’s query", "“Partially Adhered.”", "“Not Detailed.”",
    "[The Begin of Response 1]", "separate by comma in the boxed", r"\boxed{x, x} if there exists 2 responeses>.",
])
def test_paper_typos_and_quotes_are_kept(fragment):
    assert fragment in prompts.grm_prompt("q", ["a", "b"])


def test_format_example_stays_literal_for_any_n():
    for n in (1, 3, 5):
        text = prompts.grm_prompt("q", [f"r{i}" for i in range(n)])
        assert text.count(r"\boxed{x, x} if there exists 2 responeses") == 1
        assert text.count("[The Begin of Response ") == n
        assert f"[The End of Response {n}]\n\n#### Output Format Requirements ####" in text


def test_string_and_single_user_message_render_the_same():
    assert prompts.grm_prompt("hi", ["a"]) == prompts.grm_prompt([{"role": "user", "content": "hi"}], ["a"])


def test_multi_turn_context_is_rendered_one_turn_per_line():
    text = prompts.grm_prompt(MULTI_TURN, ["4"])
    body = "System: Be brief.\nUser: Hi\nAssistant: Hello! How can I help?\nUser: What is 2+2?"
    assert f"#### Conversation Context ####\n{body}\n\n#### Responses to be Scored ####" in text


@pytest.mark.parametrize("context, message", [
    (MULTI_TURN[:3], "last turn of the context must be the user"),
    ([], "non-empty list"),
    ([{"role": "robot", "content": "x"}], "role in"),
    ([{"role": "user"}], "string content"),
    (42, "string or a non-empty list"),
])
def test_bad_context_gets_a_clear_error(context, message):
    with pytest.raises(ValueError, match=message):
        prompts.grm_prompt(context, ["a"])


@pytest.mark.parametrize("responses", [[], "abc", ["a", 3]])
def test_bad_responses_get_a_clear_error(responses):
    with pytest.raises(ValueError, match="string"):
        prompts.grm_prompt("q", responses)


# GRM_SPEC §1 "Single response, training", with the placeholders filled in.
EXPECTED_SINGLE = r"""You are a skilled little expert at scoring responses. You should evaluate given responses based on the given judging criteria.
Given the context of the conversation (the last round is the User’s query) and multiple responses from the Assistant, you need to refer to the [General Evaluation Criteria] to score the responses. Based on the general evaluation criteria, state potential other specific criteria to the query, the weights of different criteria, and then provide an overall comprehensive score upon them. The score is 0 or 1, with 1 indicating that the response is correct.
Before scoring, please analyze step by step. Your scoring needs to be as strict as possible.

#### Evaluation Criteria ####
1. Instruction Adherence:
 - Fully Adhered: The response fully complies with all instructions and requirements of the question.
 - Partially Adhered: The response meets most of the instructions but has some omissions or misunderstandings.
 - Basically Adhered: The response meets some instructions, but the main requirements are not fulfilled.
 - Not Adhered: The response does not meet any instructions.
 Example: If the question requires three examples and the response provides only one, it falls under “Partially Adhered.”
2. Clarity:
 - Very Clear: The response is fluent, well-structured, and logically clear.
 - Clear but Minor Issues: The response is mostly clear but has some minor language or structural issues.
 - Basically Clear: The response has noticeable language or logic issues but is still understandable.
 - Not Clear: The response is disjointed, illogical, and hard to understand.
 Example: If the response has complex sentence structures and lacks punctuation, it falls under “Basically Clear” or “Not Clear.”
3. Accuracy:
 - Completely Accurate: All information and data are completely accurate.
 - Mostly Accurate: Most information is accurate, with minor errors.
 - Some Errors: There are some noticeable errors affecting comprehension.
 - Mostly Incorrect: There are numerous errors seriously affecting the credibility of the information.
 Example: If a specific data point is incorrectly cited but doesn’t affect the overall conclusion, it falls under “Mostly Accurate.”

#### Conversation Context ####
Solve x+1=2.

#### Responses to be Scored ####
[The Begin of Response]
x=1
[The End of Response]

#### Output Format Requirements ####
Output with three lines
Specific Criteria: <Other potential criteria specific to the query and the context, and the weights of each criteria>.
Analysis: <Compare different responses based on given Criteria>.
Scores: <the overall comprehensive score of the response, e.g., \boxed{x}>."""

# GRM_SPEC §1 "Meta RM input": no blank lines, ends with the newline after the last block.
EXPECTED_META = ("Please score the responses.\n#### Conversation Context ####\nWhat is 2+2?\n"
                 "#### Responses to be Scored ####\n[The Begin of Response 1]\n4\n[The End of Response 1]\n"
                 "[The Begin of Response 2]\nfive\n[The End of Response 2]\n")


def test_single_response_training_prompt_matches_the_paper_byte_for_byte():
    assert prompts.single_response_prompt("Solve x+1=2.", "x=1") == EXPECTED_SINGLE


def test_meta_rm_prompt_matches_the_paper_byte_for_byte():
    assert prompts.meta_rm_prompt("What is 2+2?", ["4", "five"]) == EXPECTED_META


def test_judge_prompt_follows_the_papers_description():
    """GRM_SPEC §1 describes the LLM-as-a-judge text as edits of the default prompt; apply those
    edits to the (byte-exact) default prompt and compare."""
    default = prompts.grm_prompt("What is 2+2?", ["4", "five"])
    expected = default.replace("and then provide an overall comprehensive score upon them.",
                               "and then select the best response among all candidates.")
    expected = expected.replace(prompts.SCORE_SENTENCE, "")
    expected = expected.replace(prompts.STRICT, "Before judging, please analyze step by step. Your judgement "
                                                "needs to be as strict as possible.\n")
    for levels in ("9-10", "6-8", "3-5", "1-2"):
        expected = expected.replace(f" ({levels} points)", "")
    expected = expected.replace(prompts.SCORES_LINE, "Scores: <the index of the best response based on the "
                                                     r"judgement, in the format of \boxed{x}>.")
    assert prompts.judge_prompt("What is 2+2?", ["4", "five"]) == expected
    assert "to score the responses." in expected  # the paper keeps this phrase earlier on
    assert "judgment" not in expected  # the paper spells it "judgement" here


def _spec_blocks():
    """The fenced code blocks of GRM_SPEC.md §1 when the shared folder sits next to the checkout."""
    for spec in (Path(__file__).resolve().parents[2] / "shared" / "GRM_SPEC.md",):
        if spec.exists():
            text = spec.read_text()
            return [b.split("\n", 1)[1] for b in text.split("```")[1::2]]
    pytest.skip("GRM_SPEC.md (../shared) is not next to this checkout")


def test_templates_equal_the_spec_file_when_present():
    blocks = _spec_blocks()
    ctx, r1 = "{conversation context & query}", "{response 1}"
    default = next(b for b in blocks if b.startswith("You are") and "Each score is an integer" in b)
    ours = prompts.grm_prompt(ctx, [r1, "SECOND"])
    head, tail = default.split("[The Begin of Response 2]\n...\n")
    assert ours.startswith(head + "[The Begin of Response 2]\n")
    assert ours.endswith(tail.rstrip("\n"))
    single = next(b for b in blocks if "The score is 0 or 1" in b)
    assert prompts.single_response_prompt(ctx, "{the response}") == single.rstrip("\n")
    meta = next(b for b in blocks if b.startswith("Please score the responses."))
    assert prompts.meta_rm_prompt(ctx, [r1]) == meta.removesuffix("...\n")


def test_hint_is_appended_one_based_at_the_end():
    base = prompts.grm_prompt("q", ["a", "b", "c"])
    text = prompts.hinted(base, 2)
    assert text == base + "\n\nThe best response is: Response 3"
    messages = prompts.grm_messages("q", ["a", "b", "c"], best_index=0)
    assert messages == [{"role": "user", "content": base + "\n\nThe best response is: Response 1"}]
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError):
            prompts.hinted(base, bad)


def test_messages_are_one_user_turn():
    assert prompts.grm_messages("q", ["a"]) == [{"role": "user", "content": prompts.grm_prompt("q", ["a"])}]
    assert prompts.single_response_messages("q", "a")[0]["content"] == prompts.single_response_prompt("q", "a")
    assert prompts.judge_messages("q", ["a", "b"])[0]["role"] == "user"


def test_meta_rm_messages():
    messages = prompts.meta_rm_messages(MULTI_TURN, ["4", "5"], "Specific Criteria: ...\nScores: \\boxed{9, 2}")
    assert [m["role"] for m in messages] == ["user", "assistant"]
    user = messages[0]["content"]
    assert user.startswith("Please score the responses.\n#### Conversation Context ####\nSystem: Be brief.")
    assert "Output Format" not in user and "\n\n" not in user
    assert messages[1]["content"].endswith("\\boxed{9, 2}")


def test_judge_answer_is_one_index():
    assert parse_judgment("Analysis: 2 wins.\nScores: \\boxed{2}", 1, lo=1, hi=3).scores == [2]


def test_the_prompt_alone_never_parses_as_a_judgment():
    # the template's own \boxed{x, x} must not be read as scores (callers parse generated text only)
    for text in (prompts.grm_prompt("q", ["a", "b"]), prompts.single_response_prompt("q", "a")):
        assert not parse_judgment(text, 2).valid
