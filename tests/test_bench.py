"""The benchmark's GRM workload: real paper-template prompts, k shuffled orders per query."""
import pytest

from minigrm import bench


def test_grm_prompts_are_k_shuffled_paper_prompts_per_query(tiny_model):
    P, k, L = 3, 6, 930
    prompts = bench.grm_prompts(str(tiny_model), P, k, L)
    assert len(prompts) == P * k
    assert all(L - 40 <= len(p) <= L for p in prompts)  # filled to the length, whole words
    for i in range(P):
        mine = prompts[i * k:(i + 1) * k]
        assert len({tuple(p) for p in mine}) == 2  # a pair item: both orders among the k shuffles
    shared = min(next((j for j, (a, b) in enumerate(zip(p, prompts[0])) if a != b), len(p)) for p in prompts[1:])
    assert 500 < shared < L - 150  # the paper's template is shared; the query and responses are not


def test_bench_grm_runs_and_needs_a_tokenizer(tiny_model, capsys):
    bench.main(["--grm", "--model", str(tiny_model), "--prompts", "2", "--k", "3", "--prompt-len", "700",
                "--new-tokens", "3", "--no-hf"])
    assert "2 GRM queries x k=3 shuffled prompts" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--grm", "--model", "random:tiny"])
