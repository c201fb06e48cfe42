"""The scaling plot: an SVG whose points sit where the numbers say."""
import re
import xml.etree.ElementTree as ET

from minigrm.plot import BOTTOM, H, LEFT, RIGHT, TOP, W, scaling_svg


def rows(voting, meta, greedy):
    out = [{"setting": "Greedy", "k": 1, "accuracy": greedy, "roc_auc": None}]
    out += [{"setting": f"Voting@{k}", "k": k, "accuracy": v, "roc_auc": None} for k, v in voting]
    out += [{"setting": f"MetaRM@{k}", "k": k, "accuracy": v, "roc_auc": None} for k, v in meta]
    return out


def test_svg_is_valid_and_points_follow_the_data():
    svg = scaling_svg(rows([(1, 0.60), (2, 0.65), (4, 0.70), (8, 0.72)], [(2, 0.66), (4, 0.74), (8, 0.80)], 0.62),
                      title="demo <grm>")
    root = ET.fromstring(svg)  # well-formed XML, title escaped
    circles = [(float(c.get("cx")), float(c.get("cy")), c.get("fill")) for c in root.iter("{http://www.w3.org/2000/svg}circle")]
    voting = [(x, y) for x, y, f in circles if f == "#1f77b4"]
    meta = [(x, y) for x, y, f in circles if f == "#d62728"]
    assert len(voting) == 4 and len(meta) == 3
    xs = [x for x, _ in voting]
    assert xs[0] == LEFT and abs(xs[-1] - (W - RIGHT)) < 0.1  # k = 1 at the axis, k_max at the right end
    assert all(abs((b - a) - (xs[1] - xs[0])) < 0.2 for a, b in zip(xs, xs[1:]))  # log2 axis: equal steps
    assert [y for _, y in voting] == sorted((y for _, y in voting), reverse=True)  # rising accuracy = smaller y
    assert TOP <= min(y for _, y in voting + meta) and max(y for _, y in voting + meta) <= H - BOTTOM
    assert meta[-1][1] < voting[-1][1]  # 80% drawn above 72%
    assert "MetaRM@k" in svg and "Greedy" in svg and re.search(r'stroke-dasharray="5,4"', svg)


def test_roc_auc_rows_and_empty_rows():
    auc = [{"setting": "Greedy", "k": 1, "accuracy": None, "roc_auc": 0.7},
           {"setting": "Voting@1", "k": 1, "accuracy": None, "roc_auc": 0.72}]
    assert "roc_auc (%)" in scaling_svg(auc)
    assert scaling_svg([{"setting": "Greedy", "k": 1, "accuracy": None, "roc_auc": None}]) == ""
