"""The calibration options (calibration/options.py): each default defined once, the CLI reads
them, an unknown option is refused by name, and an options object writes the same file as
the same options given by keyword."""
from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import calibration  # noqa: E402
from calibration.options import BudgetOptions, QuantizeOptions  # noqa: E402
from engine.errors import InputError  # noqa: E402

from helpers import tiny_onnx  # noqa: E402

# the CLI's name of an option where it differs from the dataclass field
CLI_NAME = {"num_images": "num", "metric": "budget_metric"}
# budget options whose CLI flag means more: --max-drop absent is no budget at all, and
# --method is the budget's method only with --max-drop (else the file's, QuantizeOptions')
CLI_OWN = {"max_drop", "method"}


def cli_args(*extra):
    from engine.cli import make_parser
    return make_parser().parse_args(["quantize", "in.onnx", "out.onnx", *extra])


def test_cli_defaults_are_the_options_defaults():
    from engine.commands.quantize import BIAS_CORRECTION, CLI_TARGET, _options
    args = cli_args()
    compared = 0
    for cls in (QuantizeOptions, BudgetOptions):
        for f in fields(cls):
            name = CLI_NAME.get(f.name, f.name)
            if not hasattr(args, name) or (cls is BudgetOptions and f.name in CLI_OWN):
                continue
            value = getattr(args, name)
            if f.name == "bias_correction":
                value = BIAS_CORRECTION[value]
            if f.name == "exclude":
                value = tuple(value)
            assert value == f.default, f.name
            compared += 1
    assert compared >= 14
    # what the command line hands calibration with no option given: the defaults, with the
    # command's own target (the library's default is another engine)
    assert CLI_TARGET != calibration.targets.DEFAULT_TARGET
    assert _options(args, progress=False) == QuantizeOptions(target=CLI_TARGET)


def test_cli_unsigned_relu_goes_through_the_one_mapping():
    from engine.commands.quantize import _options
    with pytest.warns(DeprecationWarning):
        assert _options(cli_args("--unsigned-relu"), False).target == "openvino"
    with pytest.warns(DeprecationWarning), \
            pytest.raises(InputError, match="contradicts target='tensorrt'"):
        _options(cli_args("--unsigned-relu", "--target", "tensorrt"), False)
    assert _options(cli_args("--target", "triton", "--exclude", "a", "b"), False) == \
        QuantizeOptions(target="triton", exclude=("a", "b"))


def test_of_applies_changes_and_checks_them():
    base = QuantizeOptions.of(method="minmax", exclude="conv2d_1a")
    assert base.exclude == ("conv2d_1a",) and base.method == "minmax"
    changed = QuantizeOptions.of(base, threads=2)
    assert (changed.method, changed.threads, changed.exclude) == ("minmax", 2, ("conv2d_1a",))
    with pytest.warns(DeprecationWarning):
        assert QuantizeOptions.of(unsigned_relu=False).target == "tensorrt"
    for bad, match in ((dict(method="best"), "choose one of minmax"),
                       (dict(batch_size=0), "batch_size"), (dict(target="cuda"), "cuda"),
                       (dict(percentile=0), "percentile")):
        with pytest.raises(InputError, match=match):
            QuantizeOptions.of(**bad)
    with pytest.raises(InputError, match="QuantizeOptions"):
        QuantizeOptions.of({"method": "minmax"})
    budget, options = BudgetOptions.split(method="auto", max_drop=0.3, target="openvino")
    assert (budget.method, budget.max_drop, budget.search) == ("auto", 0.3, "bisect")
    assert options == QuantizeOptions(target="openvino")


def test_unknown_option_is_refused_by_name_before_any_work(tmp_path):
    with pytest.raises(InputError, match=r"unknown calibration option\(s\) methd; the "
                                         r"options are: .*method"):
        calibration.quantize(tmp_path / "missing.onnx", tmp_path / "q.onnx", data=[],
                             methd="minmax")
    with pytest.raises(InputError, match=r"max_dorp.*max_drop.*sensitivity_images"):
        calibration.quantize_to_budget(tmp_path / "missing.onnx", tmp_path / "q.onnx",
                                       np.zeros((4, 3, 8, 8), np.float32), max_dorp=1.0,
                                       data=[])
    with pytest.raises(InputError, match="one file per target"):
        calibration.quantize_targets(tmp_path / "missing.onnx", {"openvino": tmp_path / "q"},
                                     data=[], target="openvino")
    assert list(tmp_path.iterdir()) == []


def _written(path):
    """The graph's bytes and the calibration record without its timing."""
    model = onnx.load(str(path))
    record = json.loads({p.key: p.value for p in model.metadata_props}
                        ["inception.calibration"])
    record.pop("seconds")
    return model.graph.SerializeToString(), record


def test_options_object_and_keywords_write_the_same_file(tmp_path):
    src = tiny_onnx(tmp_path / "tiny.onnx")
    shape = onnx.load(str(src)).graph.input[0].type.tensor_type.shape.dim
    x = np.random.default_rng(0).normal(size=(6, *[d.dim_value for d in shape[1:]])) \
        .astype(np.float32)
    chosen = dict(method="percentile", percentile=99.9, batch_size=4, quantize_gemm=True,
                  target="openvino", bias_correction=False)
    by_keyword = calibration.quantize(src, tmp_path / "kw.onnx", data=x, **chosen)
    options = QuantizeOptions(**chosen)
    by_object = calibration.quantize(src, tmp_path / "obj.onnx", data=x, options=options)
    # an option given both ways: the keyword wins over the object's
    mixed = calibration.quantize(src, tmp_path / "mixed.onnx", data=x,
                                 options=QuantizeOptions(**{**chosen, "method": "minmax"}),
                                 method="percentile")
    assert by_keyword.amax == by_object.amax == mixed.amax and by_keyword.amax
    graph, record = _written(tmp_path / "kw.onnx")
    assert _written(tmp_path / "obj.onnx") == _written(tmp_path / "mixed.onnx") == \
        (graph, record)
    assert record["method"] == "percentile" and record["percentile"] == 99.9
    assert record["target"] == "openvino" and record["qdq_tensors"] >= 1
    other = calibration.quantize(src, tmp_path / "minmax.onnx", data=x,
                                 options=QuantizeOptions(**{**chosen, "method": "minmax"}))
    assert _written(other.path)[1]["method"] == "minmax"
