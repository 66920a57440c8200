"""The INT8 accuracy-versus-speed study: ``inception-engine study``.

For one model and one labelled test set, and for each engine and precision available on the
machine (OpenVINO FP32/BF16/INT8, ONNX Runtime FP32/INT8, TensorRT and the Triton engine
where present) and each calibration method, it measures:

- top-1 accuracy on the held-out test set and agreement (%) with the PyTorch FP32 reference;
- calibration time;
- batch-1 latency (median) at the model's own input size, and at the canonical 299x299 shape
  of its architecture at full width (random weights: speed does not depend on the values);
- batch-8 throughput and the model file's size.

The PyTorch eager FP32 reference is the baseline row, measured in the same run. Output
(``--out DIR``): ``results.json`` (a list of rows), ``results.csv``, ``report.md`` and
``pareto.png`` (accuracy vs latency).

Each INT8 method gets one file per Q/DQ layout from one calibration pass
(``calibration.quantize_targets``): the signed file (target tensorrt: what TensorRT, Triton
and ONNX Runtime run) and OpenVINO's uint8-after-ReLU file (target openvino, CPU engines only);
the ``target`` column names it.

Beside ours, each third-party quantizer installed here (:mod:`engine.anchors`: NNCF, ONNX
Runtime's ``quantize_static``, NVIDIA ModelOpt; ``anchors=`` / ``--anchors`` chooses,
``--no-anchors`` skips) quantizes the same FP32 export from the same calibration images, and
its file is measured like ours on the engines it names (the 299 figure too); the
``quantizer`` column says whose file a row is ("ours", the anchor's name, "-" for float).
``max_drop`` (``--max-drop PT``) adds the accuracy-budget rows: per target,
``calibration.quantize_to_budget`` (``method="auto"``) with the method and the layers kept
float chosen on the
validation split (the worst drop over the CPU engines that run the layout counts), and NNCF's
``quantize_with_accuracy_control`` to the same budget on the same split.

Defaults study the shipped subject: Inception-ResNet-v2 at width 0.25 trained on Fashion-MNIST
(75x75), its bundled checkpoint, the shipped 10k test set and the first ``num_calib`` (1,000)
images of the 2k calibration split drawn from the train set. ``--model inception_v4_fmnist`` /
``inception_resnet_v1_fmnist`` study the other shipped subjects, ``--model all`` all three,
with a comparison (:func:`run_study`). ``--model/--weights/--data/--calib`` study a user's
model and data.

The package, one module per job: :mod:`~engine.study.options` (every option and its default), :mod:`~engine.study.row` (a row), :mod:`~engine.study.grid`
(the engines and files studied), :mod:`~engine.study.evaluation` (measuring a row),
:mod:`~engine.study.timing`, :mod:`~engine.study.store` (one file per finished trial),
:mod:`~engine.study.executors` (where trials run), :mod:`~engine.study.quantize` (ours and the anchors' files),
:mod:`~engine.study.budget` (``--max-drop``), :mod:`~engine.study.report` (records, the best
rule, the markdown), :mod:`~engine.study.plots` and :mod:`~engine.study.labels` (figures),
:mod:`~engine.study.outputs` (the files written) and :mod:`~engine.study.run` (the entry
points). The labelled sets and the evaluator are a layer below (:mod:`engine.evaldata`,
:mod:`engine.evaluation`), shared with ``inception-engine quantize --max-drop``.
"""
from __future__ import annotations

from calibration.methods import METHODS

from ..evaldata import default_calib, load_eval_data, validation_data
from ..evaluation import engine_evaluator, predict
from .budget import budget_evaluators, budget_files, nncf_budget_file
from .evaluation import Bench
from .executors import Executor, LocalExecutor, Plan
from .grid import Trial, engines_available, study_trials
from .labels import LABEL_GID, label_panels, place_labels
from .outputs import prediction_arrays, write_comparison, write_csv, write_outputs
from .plots import comparison_figure, comparison_plot, pareto_figure, pareto_plot, \
    readable_log_ticks
from .quantize import AnchorFile, Int8File, Quantized, big_model_files, file_key, study_targets
from .report import BEST_RULE, best_line, choose_best, comparison_markdown, flag_best, \
    report_markdown, result_rows
from .options import StudyOptions
from .row import SUBJECT, Row
from .store import TrialStore
from .run import run_study, study_one, subjects
from .timing import latency_ms, machine_info

__all__ = [
    "METHODS", "SUBJECT", "Row", "Bench", "AnchorFile", "Int8File", "Quantized", "BEST_RULE",
    "LABEL_GID", "run_study", "study_one", "subjects", "engines_available", "study_trials", "Trial", "Executor", "LocalExecutor", "Plan",
    "load_eval_data", "validation_data", "default_calib", "predict", "engine_evaluator",
    "latency_ms", "machine_info", "study_targets", "file_key", "big_model_files",
    "budget_evaluators", "budget_files", "nncf_budget_file", "result_rows", "choose_best",
    "flag_best", "best_line", "report_markdown", "comparison_markdown", "write_outputs",
    "write_csv", "write_comparison", "prediction_arrays", "pareto_figure", "pareto_plot",
    "comparison_figure", "comparison_plot", "readable_log_ticks", "label_panels",
    "place_labels", "TrialStore", "StudyOptions",
]
