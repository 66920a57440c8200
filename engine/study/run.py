"""The study's entry points: :func:`run_study` (one model or ``all``) and :func:`study_one`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ..anchors import available_anchors
from ..errors import InputError
from ..evaldata import default_calib, load_eval_data, validation_data
from ..intervals import METHOD_BOUND, METHOD_DELTA, METHOD_PROPORTION
from .budget import budget_files, nncf_budget_file
from .evaluation import Bench
from .executors import Executor, LocalExecutor, Plan
from .grid import engines_available, study_trials
from .options import StudyOptions
from .row import SUBJECT
from .outputs import prediction_arrays, write_comparison, write_outputs
from .quantize import Quantized, big_model_files
from .report import BEST_RULE, best_line, result_rows
from .store import TrialStore
from .timing import machine_info


def subjects() -> List[str]:
    """The shipped study subjects: the registered variants trained on the shipped Fashion-MNIST
    data (each with a bundled checkpoint in ``engine/data/``)."""
    from ..models.registry import get_config, list_models
    return [n for n in list_models() if get_config(n).labels == "fashion_mnist"]


def _study_subject(model, weights, log):
    """The reference model, the weights actually used, and whether they are random."""
    from ..models.registry import create_model
    from ..weights import DATA_DIR
    if weights == "bundled" and not (DATA_DIR / f"{model}.safetensors").is_file():
        weights = None
    import torch
    with torch.random.fork_rng():
        torch.manual_seed(0)        # random weights: the same ones on a rerun (its trials kept)
        ref = create_model(model, weights=weights)
    if weights is None:
        log("WARNING: no --weights given: the model's weights are random, so accuracies are "
            "meaningless (latency figures still hold)")
    return ref, weights


def run_study(model: str = SUBJECT, weights="bundled", data=None, calib=None,
              out="study", log: Callable[[str], None] = print, **options) -> List[dict]:
    """Run the study and write its outputs to ``out``; returns the rows (see the module
    docstring). The baseline is the first row.

    model: a registered variant, or ``"all"``: every shipped subject (:func:`subjects`), each
    in ``out/<model>/``, then ``out/comparison.md`` and ``out/comparison.png`` side by side
    (their baselines are their own first rows). options: a :class:`StudyOptions` and/or
    changes to it by name (see :func:`study_one`).
    """
    if model != "all":
        return study_one(model, weights, data, calib, out=out, log=log, **options)
    if weights != "bundled" or data is not None or calib is not None:
        raise InputError("--model all studies the shipped subjects on the shipped data with "
                         "their bundled weights; drop --weights/--data/--calib, or name one "
                         "--model")
    rows = []
    for name in subjects():
        log(f"== {name}")
        rows += study_one(name, out=Path(out) / name, log=log, **options)
    write_comparison(Path(out), rows, log)
    return rows


def study_one(model: str = SUBJECT, weights="bundled", data=None, calib=None,
              out="study", log: Callable[[str], None] = print,
              executor: Optional[Executor] = None, options: Optional[StudyOptions] = None,
              **changes) -> List[dict]:
    """The study of one model (see :func:`run_study`), with ``options``
    (:class:`StudyOptions`, its defaults by default) and ``changes`` to them by name
    (``study_one(num_test=500)``). Each trial's row is kept in ``out/trials/``
    (:mod:`engine.study.store`): a rerun takes the finished ones from there, unless
    ``force``. executor: where the trials run (default :class:`LocalExecutor`).
    """
    import torch
    from ..export import export_onnx

    o = StudyOptions.of(options, **changes)
    methods, engines, num_calib, threads = o.methods, o.engines, o.num_calib, o.threads
    max_drop, confidence, cpu_uint8 = o.max_drop, o.confidence, o.cpu_uint8
    anchors = available_anchors(o.anchors)
    if engines:
        engines_available(engines, log=lambda _: None)      # an unknown name fails here
    if max_drop is not None and data is not None and o.val is None:
        raise InputError("--max-drop chooses the layers kept float on a validation split; "
                         "with your --data pass --val FILE.npz (or a folder of class "
                         "folders), disjoint from the test set")
    torch.set_num_threads(threads)
    out = Path(out)
    folder = out / "models"
    folder.mkdir(parents=True, exist_ok=True)
    ref, weights = _study_subject(model, weights, log)
    cfg = ref.config
    if cfg.labels != "fashion_mnist" and (data is None or calib is None):
        raise InputError(f"{model} was not trained on the shipped Fashion-MNIST data; pass "
                         "--data with your labelled test set and --calib with images like "
                         "it (the shipped calibration split would calibrate it on "
                         "Fashion-MNIST)")
    x_test, y_test = load_eval_data(data, cfg, o.num_test)
    val_set = validation_data(o.val, cfg, o.num_val) if max_drop is not None else None
    if val_set is not None:
        from calibration.budget import check_reachable
        check_reachable(max_drop, confidence, len(val_set[0]))   # before any engine runs
    calib_data = calib if calib is not None else default_calib(cfg, num_calib)
    log(f"study: {cfg.name}, {len(x_test)} test images, calibration from "
        f"{'the shipped train split' if calib is None else calib}, {threads} threads")
    fp32_path = export_onnx(ref, folder / f"{cfg.name}.onnx")
    bench = Bench(x_test, y_test, threads=threads, iters=o.iters, eval_batch=o.eval_batch,
                  log=log, paired_rounds=o.paired_rounds)

    q = Quantized(fp32_path, calib_data, num_calib, folder, cfg.name, threads, cpu_uint8, log)
    int8 = q.ours(methods, o.auto_exclude)
    theirs = q.anchors(anchors)
    if max_drop is not None:
        int8.update(budget_files(q.fp32_path, q.stats, q.stats_seconds, q.calib_data, val_set,
                                 max_drop, folder, cfg.name, threads, cpu_uint8, log,
                                 confidence))
        if "nncf" in anchors:
            theirs.update(nncf_budget_file(fp32_path, q.calib_array(), val_set, max_drop,
                                           folder, cfg.name, threads, log))
    big_model, big_files = None, {}
    if o.big:
        big_model, big_files = big_model_files(int8, folder, threads, cfg.arch, theirs, log)
        bench.x299 = np.random.default_rng(0).standard_normal((1, 3, 299, 299)).astype(np.float32)

    plan = Plan(study_trials(fp32_path, int8, big_files, engines, theirs, log), bench,
                TrialStore(out / "trials"), ref, big_model)
    executor = executor or LocalExecutor()
    rows = executor.run(plan, force=o.force, log=log)
    result = result_rows(rows, cfg.name, weights is None, y_test)
    meta = {"machine": machine_info(), "model": cfg.name, "weights": str(weights),
            "test_images": int(len(x_test)), "threads": threads, "iters": o.iters,
            "calibration_images": q.stats.num_images, "statistics_seconds": q.stats_seconds,
            "anchors": list(anchors), "max_drop": max_drop,
            "validation_images": None if val_set is None else int(len(val_set[0])),
            "budget_confidence": confidence if max_drop is not None else None,
            "interval_methods": {"top1_delta": METHOD_DELTA, "agreement": METHOD_PROPORTION,
                                 "loss_bound": METHOD_BOUND},
            "best_rule": BEST_RULE, "executor": executor.name,
            "cpu_classes": executor.classes()}
    write_outputs(out, result, meta, log, prediction_arrays(rows, y_test))
    line = best_line(result)
    if line:
        log(line)
        log(f"  ({BEST_RULE})")
    return result
