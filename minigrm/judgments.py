"""Judgment records: sampling a GRM's judgments of items, rating them with the meta RM, and reading
them off as Greedy / Voting@k / MetaRM@k results (paper §4, Eq. 14; GRM_SPEC §6).

What infer_scale.py runs, and what the training scripts run on held-out items during training
(--eval-data), so both report the same numbers the same way:

    sample(engine, tok, jobs, temperature, max_tokens, seed, on_record)   jobs: [(item, sample)]
    rate(meta_rm, items, records) -> [meta record]                          sampled judgments only
    rows = settings_rows(items, records, metas, k_max, seed, n_boot)       [{"setting", "k", **summarize}]

A judgment record: {"item", "sample" ("greedy" or 0..k-1), "order", "scores" (original order or
None), "reason", "tokens", "finish_reason", "text", "error"}; a meta record: {"item", "sample",
"meta" (None when the judgment is longer than the meta RM's context: ranked last), "reason"}.
Each (item, sample) gets its own order, stream seed and tie-break from grm.py, so records do not
depend on which other items were sampled with them, on chunking or on the number of processes.
"""
from . import grm
from .evaluate import summarize
from .sampling import SamplingParams
from .voting import k_meta_for, permute, voting_at_k

GREEDY = grm.GREEDY


def ks_up_to(k_max: int) -> list[int]:
    """1, 2, 4, ... up to k_max (and k_max itself)."""
    ks = [1]
    while ks[-1] * 2 <= k_max:
        ks.append(ks[-1] * 2)
    return ks if ks[-1] == k_max else ks + [k_max]


def sample(engine, tok, jobs, temperature: float, max_tokens: int, seed: int, on_record,
           baseline: bool = False, chunk: int = 64 * 17) -> list[str]:
    """Sample one judgment per (item, sample) job, greedy ones at temperature 0; `on_record(record)`
    as each finishes. -> the engine's messages for prompts it refused (counted invalid)."""
    refused = []
    for start in range(0, len(jobs), chunk):
        for greedy in (True, False):
            part = [(it, s) for it, s in jobs[start:start + chunk] if (s == GREEDY) == greedy]
            if not part:
                continue
            orders = [grm.order(it, s, seed) for it, s in part]
            prompts = [tok.apply_chat_template(grm.messages(it, o, baseline=baseline)) for (it, _), o in zip(part, orders)]
            params = SamplingParams(temperature=0.0 if greedy else temperature, max_tokens=max_tokens)

            def save(i, _, c, part=part, orders=orders):
                item, s = part[i]
                v = grm.judge(item, orders[i], c.text, c.finish_reason, baseline=baseline)
                on_record({"item": str(item.id), "sample": s, "order": orders[i], "scores": v.scores,
                           "reason": v.reason, "tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                           "text": c.text, "error": c.error})
                if c.finish_reason == "error":
                    refused.append(f"{item.id}: {c.error}")
            engine.generate(prompts, params, on_finish=save, seeds=[grm.stream_seed(it, s, seed) for it, s in part])
    return refused


def rate(meta_rm, items, records, batch: int = 256) -> list[dict]:
    """Meta records for the sampled (non-greedy) judgment records."""
    by_id = {str(it.id): it for it in items}
    todo = [r for r in records if r["sample"] != GREEDY]
    out = []
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        rewards = meta_rm.score([by_id[r["item"]].prompt for r in part],
                                [permute(by_id[r["item"]].responses, r["order"]) for r in part], [r["text"] for r in part])
        out += [{"item": r["item"], "sample": r["sample"], "meta": m,
                 "reason": None if m is not None else "longer than the meta RM's context"} for r, m in zip(part, rewards)]
    return out


def item_result(item, judged: list[dict], meta: list[float] | None, seed: int) -> dict:
    """One item's result under one setting (evaluate.summarize's input); judged = its k records."""
    k = len(judged)
    v = voting_at_k([r["scores"] for r in judged], item.truth, rng_seed=grm.tie_seed(item, seed),
                    meta_rewards=meta, k_meta=k_meta_for(k) if meta is not None else None)
    rec = {"id": str(item.id), "subset": item.subset, "benchmark": item.benchmark, "n_samples": k,
           "n_invalid": v.n_invalid, "n_truncated": sum(r["finish_reason"] == "length" for r in judged)}
    if item.kind == "single":
        rec.update(score=v.mean, label=item.truth[0])
    elif v.correct is None:  # several correct responses (RewardBench 2 Ties)
        rec.update(truth=item.truth, summed=v.summed)
    else:
        rec.update(correct=v.correct, correct_strict=v.correct_strict, credit=v.credit,
                   n_responses=len(item.responses))
    return rec


def settings(k_max: int, with_meta: bool) -> list[tuple[str, object, bool]]:
    """(name, k or "greedy", uses the meta RM) for every reported setting."""
    out = [("Greedy", GREEDY, False)] + [(f"Voting@{k}", k, False) for k in ks_up_to(k_max)]
    return out + ([(f"MetaRM@{k}", k, True) for k in ks_up_to(k_max) if k >= 2] if with_meta else [])


def settings_rows(items, records, metas, k_max: int, seed: int, n_boot: int = 1000) -> list[dict]:
    """[{"setting", "k", **evaluate.summarize(...)}] for Greedy, Voting@k and (with metas) MetaRM@k."""
    by_item = {}
    for r in records:
        by_item.setdefault(r["item"], {})[r["sample"]] = r
    meta = {(r["item"], r["sample"]): r["meta"] if r["meta"] is not None else float("-inf") for r in metas}
    rows = []
    for name, k, use_meta in settings(k_max, bool(metas)):
        results = []
        for it in items:
            got = by_item[str(it.id)]
            judged = [got[GREEDY]] if k == GREEDY else [got[j] for j in range(k)]
            m = [meta[(str(it.id), j)] for j in range(k)] if use_meta else None
            results.append(item_result(it, judged, m, seed))
        rows.append({"setting": name, "k": 1 if k == GREEDY else k, **summarize(results, n_boot=n_boot, seed=seed)})
    return rows
