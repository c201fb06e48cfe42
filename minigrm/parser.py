"""Reading a GRM judgment: principles, analysis and the final scores.

Paper: arXiv 2504.02495 §3 (pointwise GRM: S_i = f_extract(C)); GRM_SPEC.md §2.

Contract: `parse_judgment(text, n, lo=1, hi=10) -> Judgment`.
- Pass the GENERATED text only, never prompt + generation: the prompt's own format example
  `\\boxed{x, x}` would otherwise be read (a known bug of other judges).
- Scores come from the LAST `\\boxed{` in the text, up to its matching `}` (nested braces are
  counted). Its content is split on commas; each item, stripped of whitespace, must be a
  canonical decimal integer (`0` or `[1-9][0-9]*`, optionally with `-`), there must be exactly
  n items and each must lie in lo..hi. Use lo=0, hi=1 for `single_response_prompt`, and
  n=1, lo=1, hi=len(responses) for `judge_prompt`.
- Anything else is an invalid judgment (`.scores is None`, `.reason` says why); nothing is
  ever coerced and the function never raises on any `text` (a non-string gives "not text").
  Reasons: "not text", "no boxed", "truncated" (the last box never closes), "empty",
  "not an integer", "wrong count", "out of range".
- Strictness decisions (never coerce): "8.5", "8/10", "eight", "+8", "08", "８" (full-width)
  are "not an integer"; "-1" and "11" are "out of range"; a trailing comma leaves an empty
  item, so it is "not an integer"; an item inside nested braces (`\\text{8}`) is not an
  integer. Whitespace around items and text after the box (`\\boxed{8,9}.`) are fine.
- A text that finishes its box and then hits the token limit still parses; the caller can
  reject it by finish_reason if it wants. An unclosed last box is "truncated" even when an
  earlier box is complete: the model had not finished its answer.
- Principles come from the "Specific Criteria" section, analysis from the "Analysis" section
  (headers may carry markdown: `### Analysis:`, `**Analysis:**`, `**Analysis**:`). Principles
  are split on list markers (`1.`, `2)`, in sequence, or `-`/`*` bullets at line start;
  text before the first marker is an introduction and is dropped; no marker -> one item);
  each keeps its full text and an optional weight: "(Weight: 30%)", "weight 0.3",
  "weight = 25 %", "[30%]", "(30%)". Weights with % or above 1 are percents (/100), bare
  numbers <= 1 are fractions; none found -> None.
- Linear time: plain `str.rfind`/scans and regexes with bounded repetition only.
"""
import re
from dataclasses import dataclass, field

# Section headers at line start, with optional markdown around the name.
_HEADER = re.compile(r"^[ \t>#*_-]{0,12}(specific criteria|analysis|scores)[ \t*_]{0,6}:[*_]{0,3}",
                     re.IGNORECASE | re.MULTILINE)
# The same names inside a line: the fallback for outputs written on one line.
_INLINE_HEADER = re.compile(r"(specific criteria|analysis|scores)[ \t*_]{0,6}:[*_]{0,3}", re.IGNORECASE)
_LIST_NUMBER = re.compile(r"(?<!\S)(\d{1,2})[.)][ \t]")
_BULLET = re.compile(r"^[ \t]{0,8}[-*•][ \t]", re.MULTILINE)
_WEIGHT = re.compile(r"weight[^0-9\n]{0,12}?(\d{1,3}(?:\.\d{1,4})?)[ \t]{0,2}(%?)", re.IGNORECASE)
_BRACKET_PERCENT = re.compile(r"[(\[][ \t]{0,2}(\d{1,3}(?:\.\d{1,4})?)[ \t]{0,2}(%)[ \t]{0,2}[)\]]")
BOX = "\\boxed{"


@dataclass(frozen=True)
class Principle:
    text: str
    weight: float | None = None  # a fraction (0.3 for "30%"), None when not stated


@dataclass(frozen=True)
class Judgment:
    scores: list[int] | None  # n ints in lo..hi, or None when the judgment is invalid
    principles: list[Principle] = field(default_factory=list)
    analysis: str = ""
    reason: str | None = None  # None when valid, else why it is invalid

    @property
    def valid(self) -> bool:
        return self.scores is not None


def _last_box(text: str) -> tuple[str | None, str | None]:
    """(content of the last \\boxed{...}, None) or (None, reason)."""
    start = text.rfind(BOX)
    if start < 0:
        return None, "no boxed"
    depth, i = 1, start + len(BOX)
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j], None
    return None, "truncated"


def _parse_int(item: str) -> int | None:
    digits = item[1:] if item.startswith("-") else item
    if not (digits.isascii() and digits.isdigit()) or (len(digits) > 1 and digits[0] == "0"):
        return None
    if len(digits) > 18:  # int() refuses > 4300 digits; anything this long is out of range anyway
        return -1 if item.startswith("-") else 10 ** 18
    return int(item)


def parse_scores(text: str, n: int, lo: int = 1, hi: int = 10) -> tuple[list[int] | None, str | None]:
    """(scores, None) when the last box holds exactly n integers in lo..hi, else (None, reason)."""
    if not isinstance(text, str):
        return None, "not text"
    content, reason = _last_box(text)
    if content is None:
        return None, reason
    items = [s.strip() for s in content.split(",")]
    if all(not s for s in items):
        return None, "empty"
    scores = [_parse_int(s) for s in items]
    if any(s is None for s in scores):
        return None, "not an integer"
    if len(scores) != n:
        return None, "wrong count"
    if any(not lo <= s <= hi for s in scores):
        return None, "out of range"
    return scores, None


def _sections(text: str) -> dict[str, tuple[int, int]]:
    """{name: (start of header, end of header)} for 'specific criteria', 'analysis', 'scores'.

    Criteria and analysis: first header; scores: last header. Headers at line start win; a
    name missing there is looked for inside lines, after the section that precedes it.
    """
    found: dict[str, tuple[int, int]] = {}
    for m in _HEADER.finditer(text):
        name = m.group(1).lower()
        if name == "scores" or name not in found:
            found[name] = (m.start(), m.end())
    after = 0
    for name in ("specific criteria", "analysis", "scores"):
        if name not in found:
            m = _INLINE_HEADER.search(text, after)
            while m and m.group(1).lower() != name:
                m = _INLINE_HEADER.search(text, m.end())
            if m:
                found[name] = (m.start(), m.end())
        if name in found:
            after = found[name][1]
    return found


def _section_text(text: str, found: dict, name: str, box_start: int) -> str:
    if name not in found:
        return ""
    start = found[name][1]
    ends = [s for s, _ in found.values() if s > start] + [box_start if box_start >= start else len(text)]
    return text[start:min(ends)].strip()


def _weight(item: str) -> float | None:
    m = _WEIGHT.search(item) or _BRACKET_PERCENT.search(item)
    if not m:
        return None
    value = float(m.group(1))
    if m.group(2) == "%" or value > 1:
        return value / 100 if value <= 100 else None
    return value


def split_principles(criteria: str) -> list[Principle]:
    """Split a "Specific Criteria" section into weighted items (see the module docstring)."""
    starts, expected = [], 1
    for m in _LIST_NUMBER.finditer(criteria):  # "1." "2." ... in sequence; "version 3." is skipped
        if int(m.group(1)) == expected:
            starts.append((m.start(), m.end()))
            expected += 1
    if not starts:
        starts = [(m.start(), m.end()) for m in _BULLET.finditer(criteria)]
    if not starts:
        return [Principle(criteria, _weight(criteria))] if criteria.strip() else []
    bounds = [e for _, e in starts]
    ends = [s for s, _ in starts[1:]] + [len(criteria)]
    items = [criteria[b:e].strip() for b, e in zip(bounds, ends)]
    return [Principle(t, _weight(t)) for t in items if t]


def parse_judgment(text, n: int, lo: int = 1, hi: int = 10) -> Judgment:
    """Parse a generated judgment over n responses (caller errors in n/lo/hi raise ValueError)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or lo > hi:
        raise ValueError(f"need n >= 1 and lo <= hi, got n={n!r}, lo={lo!r}, hi={hi!r}")
    scores, reason = parse_scores(text, n, lo, hi)
    if not isinstance(text, str):
        return Judgment(None, reason=reason)
    found = _sections(text)
    box_start = text.rfind(BOX)
    criteria = _section_text(text, found, "specific criteria", box_start)
    analysis = _section_text(text, found, "analysis", box_start)
    return Judgment(scores, split_principles(criteria), analysis, reason)
