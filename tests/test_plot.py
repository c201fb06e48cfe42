"""The scaling plot: an SVG whose points, interval bars and reference lines sit where the numbers say."""
import xml.etree.ElementTree as ET

from minigrm.plot import BOTTOM, COLORS, H, LEFT, RIGHT, TOP, W, scaling_svg
from minigrm.report import curve_svg

NS = "{http://www.w3.org/2000/svg}"


def est(v, half=0.04, n=100):
    return {"value": v, "lo": v - half, "hi": v + half, "n": n}


def rows(voting, meta, greedy, chance=0.4):
    out = [{"setting": "Greedy", "k": 1, "accuracy": est(greedy), "chance": chance}]
    out += [{"setting": f"Voting@{k}", "k": k, "accuracy": est(v), "chance": chance} for k, v in voting]
    out += [{"setting": f"MetaRM@{k}", "k": k, "accuracy": est(v), "chance": chance} for k, v in meta]
    return out


def test_svg_is_valid_and_points_follow_the_data():
    svg = curve_svg(rows([(1, 0.60), (2, 0.65), (4, 0.70), (8, 0.72)], [(2, 0.66), (4, 0.74), (8, 0.80)], 0.62),
                    title="demo <grm>", lines=[("27B greedy", 71.0)])
    root = ET.fromstring(svg)  # well-formed XML, title escaped
    circles = [(float(c.get("cx")), float(c.get("cy")), c.get("fill")) for c in root.iter(f"{NS}circle")]
    voting = [(x, y) for x, y, f in circles if f == COLORS[0]]
    meta = [(x, y) for x, y, f in circles if f == COLORS[1]]
    assert len(voting) == 4 and len(meta) == 3
    xs = [x for x, _ in voting]
    assert xs[0] == LEFT and abs(xs[-1] - (W - RIGHT)) < 0.1  # k = 1 at the axis, k_max at the right end
    assert all(abs((b - a) - (xs[1] - xs[0])) < 0.2 for a, b in zip(xs, xs[1:]))  # log2 axis: equal steps
    assert [y for _, y in voting] == sorted((y for _, y in voting), reverse=True)  # rising accuracy = smaller y
    assert TOP <= min(y for _, y in voting + meta) and max(y for _, y in voting + meta) <= H - BOTTOM
    assert meta[-1][1] < voting[-1][1]  # 80% drawn above 72%
    # one interval bar per point, centred on it, 8 points tall on each side (4% in percent units)
    bars = [p.get("d") for p in root.iter(f"{NS}path") if p.get("opacity")]
    assert len(bars) == 7
    for label in ("MetaRM@k", "Greedy 62.0", "chance 40.0", "27B greedy 71.0", "95% intervals"):
        assert label in svg


def test_roc_auc_rows_and_empty_rows():
    auc = [{"setting": "Greedy", "k": 1, "accuracy": None, "roc_auc": est(0.7)},
           {"setting": "Voting@1", "k": 1, "accuracy": None, "roc_auc": est(0.72)}]
    svg = curve_svg(auc)
    assert "roc-auc (%)" in svg and "chance 50.0" in svg
    assert curve_svg([{"setting": "Greedy", "k": 1, "accuracy": None, "roc_auc": None}]) == ""
    assert scaling_svg({}, []) == ""
