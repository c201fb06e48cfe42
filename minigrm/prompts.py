"""The GRM's input: the user-turn text of the pointwise GRM prompt and its variants.

Paper: arXiv 2504.02495, Appendix (prompt templates); GRM_SPEC.md §1.

Contract:
- `grm_prompt(context, responses)` is the default prompt (n >= 1 responses, integer scores
  1..10). The released checkpoints were trained on it, so its wording, punctuation, curly
  quotes (’ “ ”) and the paper's typos ("skilled little expert", "The Begin of Response",
  "responeses", "separate by comma") are reproduced byte for byte. The format example
  `\\boxed{x, x} if there exists 2 responeses` stays literal whatever n is.
- `single_response_prompt` (n = 1 training prompt, score 0/1), `hinted` (RFT hint),
  `meta_rm_prompt` / `meta_rm_messages` (meta RM input), `judge_prompt` (LLM-as-a-judge
  baseline) are the variants of GRM_SPEC §1.
- `*_messages(...)` wrap a prompt as `[{"role": "user", "content": text}]` (one user turn, no
  system prompt) for `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`.
- Read the model's answer with `parser.parse_judgment(generated_text, n)` on the generated
  text only (never on prompt + generation: the template's own `\\boxed{x, x}` would match).

Conversation context: a string is inserted as is. A list of {"role", "content"} turns whose
last turn is the user's is rendered one turn per line as "User: ...", "Assistant: ...",
"System: ..."; a single user turn renders as its bare content, so "hi" and
[{"role": "user", "content": "hi"}] give the same prompt.

Every template is the paper's text (Appendix G, written out in GRM_SPEC §1) byte for byte; the
tests compare each one with the spec's blocks. Open choices (not in the paper):
- the multi-turn rendering above;
- where the hint goes: at the very end of the user turn, after a blank line (`hinted`).
"""

import re

Message = dict[str, str]
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}

PREAMBLE = (
    "You are a skilled little expert at scoring responses. You should evaluate given responses "
    "based on the given judging criteria.\n"
    "Given the context of the conversation (the last round is the User’s query) and multiple "
    "responses from the Assistant, you need to refer to the [General Evaluation Criteria] to "
    "score the responses. Based on the general evaluation criteria, state potential other "
    "specific criteria to the query, the weights of different criteria, and then provide an "
    "overall comprehensive score upon them.\n"
)
SCORE_SENTENCE = (
    "Each score is an integer between 1 and 10, with a higher score indicating that the "
    "response meets the relevant criteria more closely. For example, a score of 1 means the "
    "response does not meet the criteria at all, a score of 6 means the response meets only "
    "some parts, and a score of 10 means the response perfectly meets the evaluation criteria.\n"
)
# The n = 1 prompt continues the second paragraph (one space, no line break) instead.
SINGLE_SCORE_SENTENCE = " The score is 0 or 1, with 1 indicating that the response is correct.\n"
STRICT = "Before scoring, please analyze step by step. Your scoring needs to be as strict as possible.\n"

CRITERIA = """#### Evaluation Criteria ####
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
"""

# The n = 1 training prompt's criteria (GRM_SPEC §1): three, with level names but no point ranges.
SINGLE_CRITERIA = """#### Evaluation Criteria ####
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
"""
# The judge baseline's criteria: the default four without their point ranges.
JUDGE_CRITERIA = re.sub(r" \(\d+-\d+ points\)", "", CRITERIA)

FORMAT_HEADER = "#### Output Format Requirements ####\nOutput with three lines\n"
CRITERIA_LINE = ("Specific Criteria: <Other potential criteria specific to the query and the "
                 "context, and the weights of each criteria>.\n")
ANALYSIS_LINE = "Analysis: <Compare different responses based on given Criteria>.\n"
SCORES_LINE = ("Scores: <the overall comprehensive score of all responses in order, separate by "
               "comma in the boxed, e.g., \\boxed{x, x} if there exists 2 responeses>.")
SINGLE_SCORES_LINE = "Scores: <the overall comprehensive score of the response, e.g., \\boxed{x}>."
JUDGE_SCORES_LINE = ("Scores: <the index of the best response based on the judgement, in the format of "
                     "\\boxed{x}>.")
JUDGE_PREAMBLE = PREAMBLE.replace("and then provide an overall comprehensive score upon them.",
                                  "and then select the best response among all candidates.")
JUDGE_STRICT = "Before judging, please analyze step by step. Your judgement needs to be as strict as possible.\n"
META_RM_INSTRUCTION = "Please score the responses.\n"
HINT = "The best response is: Response {j}"


def render_context(context) -> str:
    """The `#### Conversation Context ####` block's body (see the module docstring)."""
    if isinstance(context, str):
        return context
    if not isinstance(context, (list, tuple)) or not context:
        raise ValueError("context must be a string or a non-empty list of {'role', 'content'} messages")
    for i, m in enumerate(context):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLE_NAMES:
            raise ValueError(f"context message {i} must be a dict with role in {sorted(ROLE_NAMES)} "
                             f"and a string content, got {m!r:.100}")
    if context[-1]["role"] != "user":
        raise ValueError(f"the last turn of the context must be the user's query, "
                         f"got role {context[-1]['role']!r}")
    if len(context) == 1:
        return context[0]["content"]
    return "\n".join(f"{ROLE_NAMES[m['role']]}: {m['content']}" for m in context)


def _check_responses(responses) -> list[str]:
    if isinstance(responses, str) or not isinstance(responses, (list, tuple)) or not responses:
        raise ValueError("responses must be a non-empty list of strings")
    if not all(isinstance(r, str) for r in responses):
        raise ValueError("every response must be a string")
    return list(responses)


def _context_block(context) -> str:
    return f"#### Conversation Context ####\n{render_context(context)}\n"


def _responses_block(responses) -> str:
    body = "".join(f"[The Begin of Response {i}]\n{r}\n[The End of Response {i}]\n"
                   for i, r in enumerate(_check_responses(responses), start=1))
    return "#### Responses to be Scored ####\n" + body


def grm_prompt(context, responses: list[str]) -> str:
    """The default pointwise GRM prompt: principles, analysis, one 1..10 score per response."""
    return (PREAMBLE + SCORE_SENTENCE + STRICT + "\n" + CRITERIA + "\n" + _context_block(context) + "\n"
            + _responses_block(responses) + "\n" + FORMAT_HEADER + CRITERIA_LINE + ANALYSIS_LINE + SCORES_LINE)


def single_response_prompt(context, response: str) -> str:
    """The n = 1 training prompt for verifiable queries: one score in {0, 1} (parse with lo=0, hi=1)."""
    if not isinstance(response, str):
        raise ValueError("response must be a string")
    block = f"#### Responses to be Scored ####\n[The Begin of Response]\n{response}\n[The End of Response]\n"
    return (PREAMBLE.removesuffix("\n") + SINGLE_SCORE_SENTENCE + STRICT + "\n" + SINGLE_CRITERIA + "\n"
            + _context_block(context) + "\n" + block + "\n" + FORMAT_HEADER + CRITERIA_LINE + ANALYSIS_LINE
            + SINGLE_SCORES_LINE)


def hinted(prompt_text: str, best_index: int) -> str:
    """Append the RFT hint; `best_index` is 0-based, the hint names Response best_index + 1.

    Open choice: the hint goes at the very end of the user turn after a blank line.
    """
    if isinstance(best_index, bool) or not isinstance(best_index, int) or best_index < 0:
        raise ValueError(f"best_index must be a 0-based int, got {best_index!r}")
    return f"{prompt_text}\n\n{HINT.format(j=best_index + 1)}"


def judge_prompt(context, responses: list[str]) -> str:
    """LLM-as-a-judge baseline: pick the best response; parse with
    `parse_judgment(text, 1, lo=1, hi=len(responses))` (the box holds a 1-based index)."""
    return (JUDGE_PREAMBLE + JUDGE_STRICT + "\n" + JUDGE_CRITERIA + "\n" + _context_block(context) + "\n"
            + _responses_block(responses) + "\n" + FORMAT_HEADER + CRITERIA_LINE + ANALYSIS_LINE
            + JUDGE_SCORES_LINE)


def meta_rm_prompt(context, responses: list[str]) -> str:
    """The meta RM's user turn (no blank lines; it ends with the newline after the last response
    block); the GRM's judgment follows as the assistant turn."""
    return META_RM_INSTRUCTION + _context_block(context) + _responses_block(responses)


def user_messages(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def grm_messages(context, responses: list[str], best_index: int | None = None) -> list[Message]:
    """One user turn holding `grm_prompt`, hinted when `best_index` (0-based) is given."""
    text = grm_prompt(context, responses)
    return user_messages(text if best_index is None else hinted(text, best_index))


def single_response_messages(context, response: str) -> list[Message]:
    return user_messages(single_response_prompt(context, response))


def judge_messages(context, responses: list[str]) -> list[Message]:
    return user_messages(judge_prompt(context, responses))


def meta_rm_messages(context, responses: list[str], judgment: str) -> list[Message]:
    """[user: meta RM prompt, assistant: the GRM's generated judgment]. Render with
    `apply_chat_template(messages, add_generation_prompt=False)`."""
    if not isinstance(judgment, str):
        raise ValueError("judgment must be the GRM's generated text")
    return [{"role": "user", "content": meta_rm_prompt(context, responses)},
            {"role": "assistant", "content": judgment}]
