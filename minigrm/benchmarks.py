"""The benchmarks of the paper's tables: their native files, their subsets and their aggregates.

Paper: arXiv 2504.02495 §5.1 and Table 2; GRM_SPEC §7. This module knows which subset belongs
to which benchmark and how each benchmark turns per-subset numbers into its one score; the
per-item numbers come from voting.py, the intervals from evaluate.py.

Aggregates (fractions in [0, 1]):
  RewardBench       four sections (Chat, Chat Hard, Safety, Reasoning), each a weighted mean of
                    its subsets with RewardBench's fixed EXAMPLE_COUNTS (as its official script
                    and leaderboard do; they equal the prompt counts except math-prm, counted as
                    984 = 6 x 164 instead of 447 so that math weighs as much as the six code
                    subsets together); the score is the mean of the four sections.
  RMB               the plain mean of Help-BoN, Help-Pair, Harm-BoN, Harm-Pair (the paper's
                    62.3 / 80.5 / 57.0 / 76.1 -> 69.0).
  PPE Correctness   the plain mean of its five subsets (MMLU-Pro, MATH, GPQA, MBPP-Plus, IFEval).
  RewardBench 2     the plain mean of its six subsets, "Ties" scored by its own rule (`ties_score`).
  anything else     (PPE Preference, a custom set, the demo) accuracy pooled over its items.
  Overall           the mean of the benchmarks present (the paper: RB, PPE-Pref, PPE-Corr, RMB).
With only some subsets of a benchmark present, its score is the same mean over those present
(RewardBench: over the sections present); `complete` says whether all were there.

An item's benchmark is its record's "benchmark" field when given, else inferred from its
subset name (RewardBench's 23 subsets, RMB's four), else set by the native readers below.

Native files accepted besides minigrm's own shapes (data.py):
  RMB (Zhou et al. 2024; RMB_dataset/*.json, JSON arrays): pairwise records
    {"pair_uid", "conversation_input", "chosen": {"answer"}, "reject": {"answer"}, "category_path"}
    and best-of-N records {"bon_uid", "conversation_input", "bon_best": {"answer"},
    "loser_list": [{"answer"}...], "category_path"}; the subset comes from category_path
    ("BoN_set/Helpfulness/..." -> "Help-BoN"), the scenario is kept in extra["category"].
    RMB's BoN accuracy (the best above every loser) is Eq. 10 on a one-hot list.
  RewardBench 2 ({"id", "prompt", "chosen": [...], "rejected": [...], "subset"}): one chosen ->
    a best-of-N list; several chosen (the Ties subset) -> an item with several correct responses,
    scored by `ties_score` (ids "ref:<n>" / "tied:<n>" pair each tied prompt with its reference).
"""
import math

REWARDBENCH = "RewardBench"
REWARDBENCH_2 = "RewardBench 2"
RMB = "RMB"
PPE_CORRECTNESS = "PPE Correctness"

REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
SUBSET_TO_SECTION = {s: sec for sec, subsets in REWARDBENCH_SECTIONS.items() for s in subsets}
# RewardBench's EXAMPLE_COUNTS (rewardbench/constants.py): math-prm upweighted from 447 to 984.
REWARDBENCH_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
    "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 984, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
MEAN_OF_SUBSETS = {
    RMB: ("Help-BoN", "Help-Pair", "Harm-BoN", "Harm-Pair"),
    PPE_CORRECTNESS: ("MMLU-Pro", "MATH", "GPQA", "MBPP-Plus", "IFEval"),
    REWARDBENCH_2: ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"),
}
TIES = "Ties"


def benchmark_of(subset, given=None) -> str | None:
    """The benchmark an item belongs to: its explicit "benchmark" field, else by subset name."""
    if given is not None:
        return str(given)
    if subset in SUBSET_TO_SECTION:
        return REWARDBENCH
    if subset in MEAN_OF_SUBSETS[RMB]:
        return RMB
    return None


def rewardbench_sections(acc_per_subset: dict, counts: dict | None = None, weighting: str = "official") -> dict:
    """{section: weighted accuracy} for the sections with data, plus "Score" (their mean).

    weighting="official" uses REWARDBENCH_COUNTS; "prompts" uses `counts` (prompts evaluated).
    """
    if weighting not in ("official", "prompts"):
        raise ValueError(f"weighting must be 'official' or 'prompts', got {weighting!r}")
    if weighting == "prompts" and counts is None:
        raise ValueError("weighting='prompts' needs the per-subset prompt counts")
    weights = REWARDBENCH_COUNTS if weighting == "official" else counts
    out = {}
    for section, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if acc_per_subset.get(s) is not None]
        total = sum(weights[s] for s in present)
        if present and total > 0:
            out[section] = sum(acc_per_subset[s] * weights[s] for s in present) / total
    if out:
        out["Score"] = sum(out.values()) / len(out)
    return out


def aggregate(benchmark: str | None, subset_values: dict, pooled: float | None) -> dict:
    """One benchmark's score from its subsets' values: {"score", "complete", "sections"?}.
    `pooled` is the accuracy pooled over the benchmark's items (used for unknown benchmarks)."""
    if benchmark == REWARDBENCH:
        sections = rewardbench_sections(subset_values)
        return {"score": sections.get("Score"), "complete": len(sections) == 5,
                "sections": {k: v for k, v in sections.items() if k != "Score"}}
    if benchmark in MEAN_OF_SUBSETS:
        wanted = MEAN_OF_SUBSETS[benchmark]
        present = [subset_values[s] for s in wanted if subset_values.get(s) is not None]
        return {"score": sum(present) / len(present) if present else None, "complete": len(present) == len(wanted)}
    return {"score": pooled, "complete": True}


# ---------------------------------------------------------------------------- RewardBench 2 Ties

def _margins(scores: list[float], truth: list[int]):
    correct = [s for s, t in zip(scores, truth) if t]
    wrong = [s for s, t in zip(scores, truth) if not t]
    spread = max(correct) - min(correct) if len(correct) > 1 else None  # among correct answers
    gap = min(correct) - max(wrong)  # worst correct minus best wrong
    return gap > 0, spread, gap


def ties_score(items: list[tuple[str, list[int], list[float] | None]]) -> float:
    """RewardBench 2's Ties rule over (id, truth, voted scores) triples, ids "ref:<n>" / "tied:<n>":
    0.3 accuracy on tied prompts + 0.3 accuracy on their reference prompts (every correct answer
    above every wrong one) + 0.2 P(the gap correct-wrong exceeds the spread among correct answers)
    + 0.2 the same with the smaller of the tied and reference gaps + 0.01 mean tanh(gap / spread - 1).
    An item without a valid judgment scores every response equal (inaccurate, zero gap)."""
    stats = {"ref": {}, "tied": {}}
    for item_id, truth, scores in items:
        kind, _, pid = str(item_id).partition(":")
        if kind not in stats or not pid:
            raise ValueError(f"RewardBench 2 Ties ids look like 'ref:<n>' or 'tied:<n>', got {item_id!r}")
        stats[kind][pid] = _margins(scores if scores is not None else [0.0] * len(truth), truth)
    ref, tied = stats["ref"], stats["tied"]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    common = [p for p in tied if p in ref and tied[p][1] is not None]
    preferred = mean([tied[p][2] > tied[p][1] for p in common])
    preferred_hard = mean([min(ref[p][2], tied[p][2]) > tied[p][1] for p in common])
    ratios = [min(ref[p][2], tied[p][2]) / tied[p][1] for p in common if tied[p][1] > 0]
    return (0.3 * mean([s[0] for s in tied.values()]) + 0.3 * mean([s[0] for s in ref.values()])
            + 0.2 * preferred + 0.2 * preferred_hard + 0.01 * mean([math.tanh(r - 1) for r in ratios]))


# ---------------------------------------------------------------------------- native files

def _rmb_subset(category_path: str) -> str:
    parts = str(category_path).split("/")
    kind = {"BoN_set": "BoN", "Pairwise_set": "Pair"}.get(parts[0])
    goal = {"Helpfulness": "Help", "Harmlessness": "Harm"}.get(parts[1] if len(parts) > 1 else "")
    if kind is None or goal is None:
        raise ValueError(f"RMB category_path {category_path!r} is not BoN_set|Pairwise_set/Helpfulness|Harmlessness/...")
    return f"{goal}-{kind}"


def _answer(x, field: str) -> str:
    if not isinstance(x, dict) or not isinstance(x.get("answer"), str):
        raise ValueError(f"RMB field {field!r} must be an object with a string 'answer'")
    return x["answer"]


def from_native(record: dict) -> dict | None:
    """A native RMB or RewardBench 2 record in minigrm's own shapes (data.py), or None."""
    if "conversation_input" in record and ("bon_best" in record or "reject" in record):
        base = {"prompt": record["conversation_input"], "benchmark": RMB,
                "subset": _rmb_subset(record.get("category_path", "")),
                "category": "/".join(str(record.get("category_path", "")).split("/")[2:])}
        if "bon_best" in record:
            losers = record.get("loser_list")
            if not isinstance(losers, list) or not losers:
                raise ValueError("RMB 'loser_list' must be a non-empty list")
            return {**base, "id": f"rmb-bon-{record.get('bon_uid')}", "best": 0,
                    "responses": [_answer(record["bon_best"], "bon_best")]
                    + [_answer(x, "loser_list") for x in losers]}
        return {**base, "id": f"rmb-pair-{record.get('pair_uid')}", "chosen": _answer(record.get("chosen"), "chosen"),
                "rejected": _answer(record["reject"], "reject")}
    if isinstance(record.get("chosen"), list) and isinstance(record.get("rejected"), list):
        chosen, rejected = record["chosen"], record["rejected"]
        if not chosen or not rejected:
            raise ValueError("a RewardBench 2 record needs non-empty 'chosen' and 'rejected' lists")
        out = {"prompt": record.get("prompt"), "benchmark": REWARDBENCH_2, "subset": record.get("subset"),
               "responses": chosen + rejected}
        if "id" in record:
            out["id"] = record["id"]
        if len(chosen) == 1:
            return {**out, "best": 0}
        return {**out, "correct": [1] * len(chosen) + [0] * len(rejected)}
    return None
