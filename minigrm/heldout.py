"""Held-out evaluation during training (train_rl.py / train_rft.py --eval-data ... --eval-every N).

The demo's first GRPO run raised its training reward while held-out Voting@1 fell, and nothing in
the run showed it. These evaluations run on a fixed held-out sample through infer_scale.py's own
code (judgments.py: the same orders, seeds, parsing and scoring), on the weights being trained:

    heldout = HeldOut(items, k=4, temperature=0.5, max_tokens=1024, seed=0)
    heldout.grm(engine, tok)   -> {"eval/greedy", "eval/voting@k", "eval/invalid", ["eval/roc_auc"]}
    meta = MetaHeldOut(items, records)          # judgments of held-out items by the GRM to guide,
    meta.auc(meta_rm)          -> {"eval/meta_auc", "eval/meta_positive"}  labelled by Eq. 10

Accuracies use the paper's tie rule (evaluate.py); the meta RM's AUC says how well its reward
separates correct from incorrect judgments (Eq. 10), what MetaRM@k's filtering relies on. The
engine must read the live weights (it does: it holds the model) and its prefix cache must not
hold K/V of older weights: `grm()` resets it first.
"""
from . import grm, judgments
from .evaluate import roc_auc


class HeldOut:
    def __init__(self, items, k: int, temperature: float, max_tokens: int, seed: int):
        self.items, self.k, self.temperature, self.max_tokens, self.seed = items, k, temperature, max_tokens, seed

    def grm(self, engine, tok) -> dict:
        engine.reset_prefix_cache()  # cached prompt K/V may come from the weights before the last update
        records = []
        jobs = [(it, s) for it in self.items for s in [grm.GREEDY, *range(self.k)]]
        judgments.sample(engine, tok, jobs, self.temperature, self.max_tokens, self.seed, records.append)
        rows = {r["setting"]: r for r in judgments.settings_rows(self.items, records, [], self.k, self.seed, n_boot=1)}
        greedy, voted = rows["Greedy"], rows[f"Voting@{self.k}"]
        out = {"eval/invalid": sum(r["scores"] is None for r in records) / len(records)}
        for name, row in (("greedy", greedy), (f"voting@{self.k}", voted)):
            if row.get("accuracy"):
                out[f"eval/{name}"] = row["accuracy"]["value"]
            if row.get("roc_auc"):
                out[f"eval/{name}_roc_auc"] = row["roc_auc"]["value"]
        return out


class MetaHeldOut:
    """Held-out judgments (records from judgments.sample) labelled by Eq. 10 once; the meta RM's
    ROC-AUC on them at every evaluation."""

    def __init__(self, items, records):
        by_id = {str(it.id): it for it in items}
        self.records, self.labels = [], []
        for r in records:
            item = by_id[r["item"]]
            v = grm.judge(item, r["order"], r["text"], r["finish_reason"])
            if r["sample"] != grm.GREEDY and v.correct is not None:
                self.records.append(r)
                self.labels.append(int(v.correct))
        self.items = items

    def auc(self, meta_rm) -> dict:
        rewards = [m["meta"] for m in judgments.rate(meta_rm, self.items, self.records)]
        scored = [(m if m is not None else float("-inf"), y) for m, y in zip(rewards, self.labels)]
        out = {"eval/meta_positive": sum(self.labels) / max(len(self.labels), 1)}
        if 0 < sum(self.labels) < len(self.labels):
            out["eval/meta_auc"] = roc_auc([m for m, _ in scored], [y for _, y in scored])
        return out
