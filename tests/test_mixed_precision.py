"""Mixed precision to an accuracy budget: the greedy rule, the loss and its bound, the
refusal of a split too small for the budget, and a planted sensitive layer on the trained
subject found and kept in float."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import calibration
from calibration.budget import counted, greedy_exclusion, paired_outcome, worst_outcome
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
    assert budget.bound == pytest.approx(0.02)
    assert calls == [[], ["a"], ["a", "b"], ["a", "b", "c"]]
    assert [s.excluded for s in budget.steps] == [0, 1, 2, 3]
    assert [s.bound for s in budget.steps] == pytest.approx([0.52, 0.52, 0.52, 0.02])


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
        assert budget.bound == pytest.approx(0.02)
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


def test_losses_are_counted_not_netted():
    """A file that flips images each way has lost the ones FP32 got right, whatever the net
    top-1 says; without labels every changed top-1 counts."""
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]        # predicts 0, 1, 2, 3
    got = np.eye(4, dtype=np.float32)[[1, 1, 3, 3]]        # first loses, third gains
    labels = np.array([0, 1, 3, 3])                        # FP32 right on 0, 1, 3
    top1 = paired_outcome(got, ref, labels)
    assert (top1.losses, top1.gains, top1.delta_pt) == (1, 1, 0.0)   # net 0, one image lost
    assert top1.loss_pt == pytest.approx(25.0) and counted(top1, "top1") == 1
    agree = paired_outcome(got, ref, None)
    assert counted(agree, "agreement") == 2 and agree.agreement_pt == pytest.approx(50.0)
    assert paired_outcome(ref, ref, labels).losses == 0


def test_worst_outcome_over_engines_counts_the_worst():
    ref = np.eye(4, dtype=np.float32)
    labels = np.arange(4)
    faithful = lambda path: ref                                   # noqa: E731
    saturating = lambda path: np.eye(4, dtype=np.float32)[[0, 0, 0, 3]]  # noqa: E731
    assert worst_outcome([faithful], [ref], "f.onnx", labels, "top1").losses == 0
    assert worst_outcome([faithful, saturating], [ref, ref], "f.onnx", labels,
                         "top1").losses == 2


def test_greedy_holds_the_upper_bound_not_the_point_estimate():
    """With 1,000 images, 2 losses read 0.2 pt but their 95% upper bound is 0.63 pt: a 0.5 pt
    budget passes over that count and stops at the one with no loss (bound 0.30 pt)."""
    from engine.intervals import Paired
    losses = {0: 9, 1: 2, 2: 0}
    budget = greedy_exclusion(["a", "b", "c"], lambda kept: Paired(1000, losses[len(kept)], 0,
                                                                    losses[len(kept)]),
                              max_drop=0.5)
    assert budget.excluded == ["a", "b"] and budget.losses == 0
    assert budget.steps[1].loss == pytest.approx(0.2) and budget.steps[1].bound > 0.5
    assert budget.bound == pytest.approx(100 * (1 - 0.05 ** (1 / 1000)))   # L = 0, closed form
    assert "2 layers kept in float" in budget.summary() and "all of them" not in budget.summary()
    every = greedy_exclusion(["a", "b"], lambda kept: Paired(1000, 9 * (len(kept) < 2), 0, 0),
                             max_drop=0.5)
    assert every.excluded == ["a", "b"] and "only the float graph" in every.summary()


def test_a_split_too_small_for_the_budget_is_refused_with_the_size_it_needs(tmp_path):
    """0.1 pt at 95% needs n >= ln(0.05) / ln(0.999) = 2994.2, i.e. 2,995 images: 2,000 are
    refused before any file is read or written, and the message says how many are needed."""
    from calibration.budget import check_reachable
    with pytest.raises(CalibrationArgumentError, match=r"cannot be met on 2000 validation "
                       r"images.*upper bound of 0\.150 pt.*at least 2995 validation images"):
        check_reachable(0.1, 0.95, 2000)
    check_reachable(0.1, 0.95, 2995)                        # just enough: no error
    with pytest.raises(CalibrationArgumentError, match="at least 2995"):
        calibration.quantize_to_budget(tmp_path / "missing.onnx", tmp_path / "x.onnx",
                                       np.zeros((2000, 3, 8, 8), np.float32),
                                       np.zeros(2000, np.int64), max_drop=0.1, data=[])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ on the trained subject
@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    import engine
    from engine.datasets import fashion_mnist, to_model_input
    model = engine.create_model("inception_resnet_v2_fmnist", weights="bundled")
    path = engine.export_onnx(model, tmp_path_factory.mktemp("budget") / "subject.onnx")
    calib, _ = fashion_mnist("calib", limit=32)
    val, labels = fashion_mnist("val", limit=400)
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
    # 2 pt at 95% on 400 images: at most 3 images lost (bound 1.94 pt)
    res = calibration.quantize_to_budget(path, out, val, labels, max_drop=2.0, data=calib,
                                         statistics=stats, method="minmax",
                                         sensitivity_images=8, target="openvino", threads=2)
    budget = res.budget
    assert budget.steps[0].bound > 2.0                     # fully INT8 breaks the budget
    assert layer in budget.excluded and budget.excluded[0] == layer
    assert budget.bound <= 2.0 and budget.losses <= 3 and len(budget.excluded) <= 3
    assert budget.images == 400 and budget.confidence == 0.95
    record = json.loads({p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
                        ["inception.calibration"])
    assert record["budget"]["kept_float"] == budget.excluded and record["target"] == "openvino"
    assert record["budget"]["losses"] == budget.losses
    assert record["budget"]["loss_bound_pt"] == pytest.approx(budget.bound, abs=1e-4)
    assert layer in record["excluded_nodes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.onnx"]   # no trial file left


@pytest.mark.slow      # a second sensitivity ranking (~40 s); the rule is tested above
def test_unreachable_budget_leaves_no_file(subject, planted, tmp_path):
    path, calib, val, labels = subject
    stats, _ = planted
    with pytest.raises(CalibrationError, match="not met"):
        calibration.quantize_to_budget(path, tmp_path / "x.onnx", val, labels, max_drop=0.8,
                                       data=calib, statistics=stats, method="minmax",
                                       sensitivity_images=8, max_excluded=0, threads=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, match", [
    (dict(max_drop=-1), "max_drop"), (dict(max_drop=0.0), "max_drop"),
    (dict(confidence=1.0), "confidence"), (dict(metric="top5"), "metric"),
    (dict(val_labels=None), "needs the validation labels"),
    (dict(auto_exclude=3), "chooses the layers kept in float itself")])
def test_bad_budget_arguments(subject, tmp_path, kw, match):
    path, calib, val, labels = subject
    args = dict(val_labels=labels, max_drop=2.0, data=calib)
    args.update(kw)
    with pytest.raises(CalibrationArgumentError, match=match):
        calibration.quantize_to_budget(path, tmp_path / "x.onnx", val, **args)


# ------------------------------------------------------------------ the file written is the one chosen
def conv_chain(path, depth=10):
    """X -> (Conv 4->4 3x3, Relu) x depth: a model with ``depth`` layers to keep float."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    nodes, inits, t = [], [], "x"
    for i in range(depth):
        inits += [numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(np.zeros(4, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [t, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        t = f"r{i}"
    g = helper.make_graph(nodes, "chain",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", 4, 6, 6])],
                          inits)
    import onnx
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bisection_publishes_the_chosen_file_not_the_last_trial(tmp_path):
    """Bisection's last trial can be over budget (here: 0, 1, 2, 4 over, 8 and 6 within, then
    5 over); the published file must keep the chosen 6 layers float, as its record says."""
    import onnx
    need = 6
    val = np.random.default_rng(1).normal(size=(100, 4, 6, 6)).astype(np.float32)
    ref = np.tile(np.eye(4, dtype=np.float32), (25, 1))
    # 3 pt at 95% on 100 images: met with no image lost (bound 2.95 pt), not with one (4.66)

    def fake_engine(path):
        """Logits whose agreement with ``ref`` loses one image per layer short of ``need``."""
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        record = json.loads(props.get("inception.calibration", "{}"))
        short = max(0, need - len(record.get("excluded_nodes", need * [None])))
        out = ref.copy()
        out[:short] = np.roll(out[:short], 1, axis=1)
        return out

    src = conv_chain(tmp_path / "chain.onnx")
    out = tmp_path / "budget.onnx"
    res = calibration.quantize_to_budget(src, out, val, max_drop=3.0, metric="agreement",
                                         data=val[:16], method="minmax", sensitivity_images=4,
                                         evaluate=fake_engine, search="bisect")
    assert [s.excluded for s in res.budget.steps] == [0, 1, 2, 4, 8, 6, 5]
    assert len(res.budget.excluded) == need
    record = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}
                        ["inception.calibration"])
    assert sorted(record["excluded_nodes"]) == sorted(res.budget.excluded)
    assert sorted(res.plan.excluded) == sorted(res.budget.excluded)
    assert fake_engine(out).argmax(1).tolist() == ref.argmax(1).tolist()


def test_choose_method_least_drop_then_least_disagreement():
    from calibration.budget import choose_method
    pairs = {"minmax": (0.2, 0.6), "percentile": (0.0, 0.5), "entropy": (3.0, 4.0),
             "mse": (0.0, 0.3)}
    best, tried = choose_method(lambda m: pairs[m], ["minmax", "percentile", "entropy", "mse"])
    assert best == "mse" and tried["entropy"] == [3.0, 4.0]
    pairs["mse"] = (0.0, 0.5)                                  # a full tie: the list's order
    assert choose_method(lambda m: pairs[m], ["minmax", "mse", "percentile"])[0] == "mse"


def test_auto_method_is_chosen_on_validation_and_recorded(tmp_path):
    """method="auto": every method's fully INT8 file is scored on the validation split and
    the least lossy one is used (here the fake engine penalises all but mse)."""
    import onnx
    val = np.random.default_rng(1).normal(size=(40, 4, 6, 6)).astype(np.float32)
    ref = np.tile(np.eye(4, dtype=np.float32), (10, 1))

    def fake_engine(path):
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        record = json.loads(props.get("inception.calibration", "{}"))
        out = ref.copy()
        if record.get("method", "mse") != "mse":
            out[:2] = np.roll(out[:2], 1, axis=1)              # 5 pt worse
        return out

    src = conv_chain(tmp_path / "chain.onnx", depth=4)
    res = calibration.quantize_to_budget(src, tmp_path / "b.onnx", val, max_drop=8.0,
                                         metric="agreement", data=val[:8], method="auto",
                                         sensitivity_images=4, evaluate=fake_engine)
    assert res.method == "mse" and res.budget.method == "mse" and res.budget.excluded == []
    assert set(res.budget.methods_tried) == set(calibration.METHODS)
    bound, disagreement = res.budget.methods_tried["minmax"]
    assert disagreement == 5.0 and bound > res.budget.methods_tried["mse"][0] > 0
    record = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx"))
                         .metadata_props}["inception.calibration"])
    assert record["budget"]["method"] == "mse" and record["method"] == "mse"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.onnx", "chain.onnx"]
    with pytest.raises(CalibrationArgumentError, match="method must be one of"):
        calibration.quantize_to_budget(src, tmp_path / "c.onnx", val, max_drop=8.0,
                                       metric="agreement", data=val[:8], method="best")
