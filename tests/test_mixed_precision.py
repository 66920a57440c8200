"""Mixed precision to an accuracy budget: the greedy rule, the drop, and a planted sensitive
layer on the trained subject found and kept in float."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import calibration
from calibration.budget import drop_points, greedy_exclusion, worst_drop
from calibration.errors import CalibrationArgumentError, CalibrationError


# ------------------------------------------------------------------ the rule, on a planted drop
def _planted(bad, base=0.02, per_bad=0.5):
    """A drop that is ``base`` plus ``per_bad`` for each layer of ``bad`` still quantized."""
    calls = []

    def drop_with(kept):
        calls.append(list(kept))
        return base + per_bad * len(set(bad) - set(kept))
    return drop_with, calls


def test_greedy_stops_at_the_first_list_within_budget():
    drop_with, calls = _planted(bad={"c"})
    budget = greedy_exclusion(["a", "b", "c", "d", "e"], drop_with, max_drop=0.1)
    assert budget.excluded == ["a", "b", "c"]            # in ranking order, nothing after c
    assert budget.drop == pytest.approx(0.02)
    assert calls == [[], ["a"], ["a", "b"], ["a", "b", "c"]]
    assert [s.excluded for s in budget.steps] == [0, 1, 2, 3]
    assert [s.drop for s in budget.steps] == pytest.approx([0.52, 0.52, 0.52, 0.02])


def test_greedy_keeps_nothing_in_float_when_int8_fits():
    drop_with, calls = _planted(bad=set())
    budget = greedy_exclusion(["a", "b"], drop_with, max_drop=0.1)
    assert budget.excluded == [] and calls == [[]]


def test_unreachable_budget_is_an_error_naming_the_drop():
    drop_with, calls = _planted(bad={"d"})
    with pytest.raises(CalibrationError, match=r"not met with 2 layers kept in float.*0\.520"):
        greedy_exclusion(["a", "b", "c", "d"], drop_with, max_drop=0.1, max_excluded=2)
    assert len(calls) == 3


@pytest.mark.parametrize("bad_at", [0, 1, 2, 5, 6, 30, 99])
def test_bisection_finds_the_linear_answer_in_few_steps(bad_at):
    """With a drop that only falls as layers go back to float, bisection keeps exactly the
    layers the linear search keeps, with O(log n) evaluations."""
    ranked = [f"l{i}" for i in range(100)]
    answers = []
    for search in ("linear", "bisect"):
        drop_with, calls = _planted(bad={ranked[bad_at]})
        budget = greedy_exclusion(ranked, drop_with, max_drop=0.1, search=search)
        answers.append(budget.excluded)
        assert budget.drop == pytest.approx(0.02)
        assert [s.excluded for s in budget.steps] == [len(c) for c in calls]
        if search == "bisect":
            assert len(calls) <= 2 * 7 + 2                 # log2(100) ~ 7: gallop + halving
    assert answers[0] == answers[1] == ranked[:bad_at + 1]


def test_bisection_reports_an_unreachable_budget():
    drop_with, calls = _planted(bad={"d"})
    with pytest.raises(CalibrationError, match=r"not met with 2 layers kept in float.*0\.520"):
        greedy_exclusion(["a", "b", "c", "d"], drop_with, max_drop=0.1, max_excluded=2,
                         search="bisect")
    assert sorted(len(c) for c in calls) == [0, 1, 2]
    drop_with, calls = _planted(bad={"a"})
    with pytest.raises(CalibrationError, match="not met with 0 layers"):
        greedy_exclusion(["a"], drop_with, max_drop=0.1, max_excluded=0, search="bisect")
    assert calls == [[]]
    with pytest.raises(CalibrationError, match="search must be one of linear, bisect"):
        greedy_exclusion(["a"], drop_with, max_drop=0.1, search="binary")


def test_drop_points_by_hand():
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]        # predicts 0, 1, 2, 3
    got = np.eye(4, dtype=np.float32)[[0, 1, 2, 0]]        # the last one changes
    labels = np.array([0, 1, 3, 3])                        # FP32 right on 3 of 4
    assert drop_points(got, ref, labels, "top1") == pytest.approx(25.0)     # 75 % -> 50 %
    assert drop_points(got, ref, None, "agreement") == pytest.approx(25.0)
    assert drop_points(ref, ref, labels, "top1") == 0.0


def test_worst_drop_over_engines_counts_the_worst():
    ref = np.eye(4, dtype=np.float32)
    labels = np.arange(4)
    faithful = lambda path: ref                                   # noqa: E731
    saturating = lambda path: np.eye(4, dtype=np.float32)[[0, 0, 0, 3]]  # noqa: E731
    assert worst_drop([faithful], [ref], "f.onnx", labels, "top1") == 0.0
    assert worst_drop([faithful, saturating], [ref, ref], "f.onnx", labels,
                      "top1") == pytest.approx(50.0)


# ------------------------------------------------------------------ on the trained subject
@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    import engine
    from engine.datasets import fashion_mnist, to_model_input
    model = engine.create_model("inception_resnet_v2_fmnist", weights="bundled")
    path = engine.export_onnx(model, tmp_path_factory.mktemp("budget") / "subject.onnx")
    calib, _ = fashion_mnist("calib", limit=32)
    val, labels = fashion_mnist("val", limit=200)
    return (path, to_model_input(calib.copy(), model.config).numpy(),
            to_model_input(val.copy(), model.config).numpy(), labels.astype(np.int64))


@pytest.fixture(scope="module")
def planted(subject):
    """Statistics whose range for one layer's input is blown up 10^4-fold: that layer's
    activations all round to zero, so it is by far the most sensitive one."""
    path, calib, _, _ = subject
    plan = calibration.plan_quantization(calibration.load_fp32(path))
    stats = calibration.collect_statistics(path, calib, threads=2)
    groups = plan.group_members()
    tensor = next(t for t, rs in plan.readers.items()
                  if len(rs) == 1 and len(groups.get(t, [t])) == 1 and t != "input")
    bad = copy.deepcopy(stats)
    bad.histograms[tensor].update(np.array([stats[tensor].amax * 1e4], np.float32))
    return bad, plan.readers[tensor][0][0]


def test_planted_sensitive_layer_is_kept_float_and_budget_holds(subject, planted, tmp_path):
    path, calib, val, labels = subject
    stats, layer = planted
    out = tmp_path / "budget.onnx"
    res = calibration.quantize_to_budget(path, out, val, labels, max_drop=0.5, data=calib,
                                         statistics=stats, method="minmax",
                                         sensitivity_images=8, target="openvino", threads=2)
    budget = res.budget
    assert budget.steps[0].drop > 0.5                      # fully INT8 breaks the budget
    assert layer in budget.excluded and budget.excluded[0] == layer
    assert budget.drop <= 0.5 and len(budget.excluded) <= 3
    record = json.loads({p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
                        ["inception.calibration"])
    assert record["budget"]["kept_float"] == budget.excluded and record["target"] == "openvino"
    assert layer in record["excluded_nodes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.onnx"]   # no trial file left


@pytest.mark.slow      # a second sensitivity ranking (~40 s); the rule is tested above
def test_unreachable_budget_leaves_no_file(subject, planted, tmp_path):
    path, calib, val, labels = subject
    stats, _ = planted
    with pytest.raises(CalibrationError, match="not met"):
        calibration.quantize_to_budget(path, tmp_path / "x.onnx", val, labels, max_drop=0.0,
                                       data=calib, statistics=stats, method="minmax",
                                       sensitivity_images=8, max_excluded=0, threads=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, match", [
    (dict(max_drop=-1), "max_drop"), (dict(metric="top5"), "metric"),
    (dict(val_labels=None), "needs the validation labels")])
def test_bad_budget_arguments(subject, tmp_path, kw, match):
    path, calib, val, labels = subject
    args = dict(val_labels=labels, max_drop=0.1, data=calib)
    args.update(kw)
    with pytest.raises(CalibrationArgumentError, match=match):
        calibration.quantize_to_budget(path, tmp_path / "x.onnx", val, **args)
