"""Tracker: log.jsonl always; TensorBoard / wandb only when asked and installed; curves from any log."""
import importlib.util
import json

import pytest

from minigrm.curves import curves_svg
from minigrm.tracking import Tracker


def test_log_jsonl_and_optional_backends(tmp_path):
    t = Tracker(tmp_path)
    t.log({"step": 1, "loss": 2.0, "eval/greedy": 0.5, "note": "x"})
    t.close()
    assert [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [
        {"step": 1, "loss": 2.0, "eval/greedy": 0.5, "note": "x"}]
    assert not Tracker(tmp_path / "off", enabled=False).path.parent.exists()  # other ranks write nothing
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(SystemExit, match="pip install tensorboard"):
            Tracker(tmp_path / "tb", tensorboard=True)
    else:
        t = Tracker(tmp_path / "tb", tensorboard=True)
        t.log({"step": 3, "loss": 1.0})
        t.close()
        assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(SystemExit, match="pip install wandb"):
            Tracker(tmp_path / "wb", wandb_project="p")


def test_curves_draw_every_metric_present():
    records = [{"step": s, "reward_mean": s / 10, "kl": 0.01 * s, **({"eval/greedy": 0.4 + s / 100} if s % 5 == 0
                                                                      else {})} for s in range(1, 21)]
    svg = curves_svg(records, title="run", smooth=4)
    assert svg.startswith("<svg") and ">reward_mean<" in svg and ">kl<" in svg and ">eval/greedy<" in svg
    assert "loss" not in svg  # absent metrics get no panel
    assert svg.count("<circle") == 20 + 20 + 4  # panels of <= 20 points mark them: the eval metric has 4
    assert curves_svg([{"step": 1}]) == ""
