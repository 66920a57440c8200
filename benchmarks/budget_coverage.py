"""Out-of-sample coverage of ``--max-drop``: does a file the budget publishes hold the budget on
images it was not chosen on?

For each shipped subject, target layout and CPU engine, each candidate file of the budget's
search (the K most sensitive layers kept float, K on a grid 0, 1, 2, 4, ... all) is written
once and scored once, image by image, on the whole held-out validation split (5,000 images)
and on the 10k test set, beside the FP32 export on the same engine. The budget is then rerun
on ``--subsets`` random validation subsets of ``--subset-size`` images drawn from those
records, with the package's own search (``calibration.budget.greedy_exclusion``, bisection,
over the grid) and bound (one-sided Clopper-Pearson at ``--confidence``). A published file
*holds* when its loss on the test set (images FP32 gets right and it gets wrong, over 10,000)
is at most the budget. The report gives, per budget, the fraction of subsets that hold, the
refusals, the K chosen and the test-set loss.

The method is fixed (``--method``, default mse) so that the candidates do not depend on the
subset; the study's ``method="auto"`` picks it on the split as well.

``--nncf N`` (needs ``nncf``) runs NNCF's ``quantize_with_accuracy_control`` to each budget on
the first N of the same subsets (its own rule: net top-1 on the subset within the budget, no
confidence), scores its OpenVINO file on the test set the same way, and reports how often it
holds. It is slow: minutes per run.

    python benchmarks/budget_coverage.py --out benchmarks/results/coverage
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import calibration  # noqa: E402
import engine  # noqa: E402
from calibration.budget import greedy_exclusion  # noqa: E402
from calibration.errors import CalibrationError  # noqa: E402
from engine.datasets import fashion_mnist, to_model_input  # noqa: E402
from engine.fileio import atomic_path, atomic_write_text  # noqa: E402
from engine.intervals import Paired, needed_images  # noqa: E402
from engine.study import engine_evaluator, subjects  # noqa: E402
from engine.timing import cpu_model  # noqa: E402

# (target layout, engine that runs it): each layout on the CPU engine it is written for (the
# signed layout's CPU engine is ONNX Runtime: OpenVINO runs it too, but its own uint8 layout is
# what a user deploys there); --cases adds others, e.g. tensorrt@openvino
CASES = (("tensorrt", "onnxruntime"), ("openvino", "openvino"))


def grid(n_layers: int):
    counts, k = [0], 1
    while k < n_layers:
        counts.append(k)
        k *= 2
    return counts + [n_layers]


def score_candidates(model_name, method, threads, folder, cases, log=print):
    """Per case: {"fp32": (val_pred, test_pred), K: (val_pred, test_pred)} and the labels."""
    model = engine.create_model(model_name, weights="bundled")
    cfg = model.config
    fp32 = engine.export_onnx(model, folder / f"{model_name}.onnx")
    vx, vy = fashion_mnist("val")
    tx, ty = fashion_mnist("test")
    xv, xt = to_model_input(vx, cfg).numpy(), to_model_input(tx, cfg).numpy()
    calib = to_model_input(fashion_mnist("calib", limit=1000)[0], cfg).numpy()
    stats = calibration.collect_statistics(fp32, calib, threads=threads, progress=False)
    plan = calibration.plan_quantization(calibration.load_fp32(fp32))
    amax = stats.amax(method, 99.99, names=plan.tensors)
    ranked = folder / f"{model_name}.{method}.ranking.json"    # the cached predictions' order
    if ranked.is_file():
        ranking = json.loads(ranked.read_text())
    else:
        ranking = [r.node for r in calibration.sensitivity(
            calibration.load_fp32(fp32), calib, amax=plan.group_amax(amax), plan=plan,
            num_images=64, threads=threads)]
        atomic_write_text(ranked, json.dumps(ranking))
    counts = grid(len(ranking))
    both = np.concatenate([xv, xt])
    records = {}
    for target, backend in cases:
        run = engine_evaluator(backend, both, threads, log=log)
        cache = folder / f"{model_name}.{target}@{backend}.predictions.npz"
        pred = dict(np.load(cache)) if cache.is_file() else {}   # a rerun resumes
        pred = {("fp32" if k == "fp32" else int(k)): v for k, v in pred.items()}
        if "fp32" not in pred:
            pred["fp32"] = run(fp32).argmax(1)
        for k in counts:
            if k not in pred:
                path = calibration.quantize(fp32, folder / f"{model_name}.{target}.k{k}.onnx",
                                            statistics=stats, method=method, target=target,
                                            exclude=ranking[:k], threads=threads).path
                pred[k] = run(path).argmax(1)
                path.unlink()
                with atomic_path(cache, suffix=".npz") as tmp:
                    np.savez(tmp, **{str(key): v for key, v in pred.items()})
            log(f"  {model_name} {target}@{backend} K={k}: val losses "
                f"{Paired.from_predictions(pred['fp32'][:len(xv)], pred[k][:len(xv)], vy).losses}"
                f", test losses "
                f"{Paired.from_predictions(pred['fp32'][len(xv):], pred[k][len(xv):], ty).losses}")
        records[(target, backend)] = {k: (p[:len(xv)], p[len(xv):]) for k, p in pred.items()}
    return records, counts, vy.astype(np.int64), ty.astype(np.int64)


def coverage(record, counts, vy, ty, budgets, confidence, subsets, subset_size, seed):
    """For each budget: per subset, the K the search publishes (or None: refused) and that
    file's loss on the test set (points)."""
    ref_v, ref_t = record["fp32"]
    draws = subset_draws(len(vy), subsets, subset_size, seed)
    out = {}
    for pt in budgets:
        trials = []
        for idx in draws:
            def loss_with(kept, idx=idx):
                k = counts[len(kept)]
                return Paired.from_predictions(ref_v[idx], record[k][0][idx], vy[idx])
            try:
                b = greedy_exclusion(list(range(1, len(counts))), loss_with, pt,
                                     search="bisect", confidence=confidence)
                k = counts[len(b.excluded)]
                test = Paired.from_predictions(ref_t, record[k][1], ty)
                trials.append({"k": k, "val_bound": round(b.bound, 4),
                               "test_loss_pt": round(test.loss_pt, 4),
                               "holds": test.loss_pt <= pt})
            except CalibrationError:
                trials.append({"k": None, "holds": None})
        published = [t for t in trials if t["k"] is not None]
        out[str(pt)] = {
            "subsets": subsets, "published": len(published),
            "refused": len(trials) - len(published),
            "hold": sum(t["holds"] for t in published),
            "fraction_hold": (sum(t["holds"] for t in published) / len(published)
                              if published else None),
            "k_chosen": sorted({t["k"] for t in published}),
            "test_loss_pt_max": max((t["test_loss_pt"] for t in published), default=None),
            "trials": trials}
    return out


def subset_draws(n_val, subsets, subset_size, seed):
    """The random validation subsets, the same for every case and for NNCF."""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_val, size=subset_size, replace=False)) for _ in range(subsets)]


def nncf_coverage(model_name, ov_fp32_test, budgets, draws, threads, folder, log=print):
    """NNCF's accuracy control on each subset of ``draws`` and budget: its test-set losses
    against OpenVINO FP32 (``ov_fp32_test``: that engine's test predictions)."""
    from engine.anchors import nncf_accuracy_control
    model = engine.create_model(model_name, weights="bundled")
    cfg = model.config
    fp32 = folder / f"{model_name}.onnx"
    vx, vy = fashion_mnist("val")
    tx, ty = fashion_mnist("test")
    xv, xt = to_model_input(vx, cfg).numpy(), to_model_input(tx, cfg).numpy()
    calib = to_model_input(fashion_mnist("calib", limit=1000)[0], cfg).numpy()
    run = engine_evaluator("openvino", xt, threads, log=log)
    out = {}
    for pt in budgets:
        trials = []
        for i, idx in enumerate(draws):
            path, seconds = nncf_accuracy_control(fp32, calib, xv[idx], vy[idx].astype(np.int64),
                                                  pt, folder, threads,
                                                  name=f"{model_name}.nncf-ac.{pt:g}.{i}")
            test = Paired.from_predictions(ov_fp32_test, run(path).argmax(1), ty)
            trials.append({"subset": i, "seconds": round(seconds, 1),
                           "test_loss_pt": round(test.loss_pt, 4),
                           "test_delta_pt": round(test.delta_pt, 4),
                           "holds": test.loss_pt <= pt, "net_holds": -test.delta_pt <= pt})
            log(f"  nncf-ac {model_name} PT={pt:g} subset {i}: test loss {test.loss_pt:.2f} pt, "
                f"net Δ {test.delta_pt:+.2f} pt, {seconds:.0f} s")
        out[str(pt)] = {"runs": len(trials), "hold": sum(t["holds"] for t in trials),
                        "net_hold": sum(t["net_holds"] for t in trials), "trials": trials}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="all", help="comma list of subjects, or all")
    p.add_argument("--method", default="mse")
    p.add_argument("--budgets", default="0.1,0.3")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--subsets", type=int, default=50)
    p.add_argument("--subset-size", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=",".join(f"{t}@{b}" for t, b in CASES),
                   help="comma list of target@engine (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nncf", type=int, default=0, metavar="N",
                   help="also run NNCF's accuracy control on the first N subsets")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "coverage")
    args = p.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    for pt in budgets:
        if args.subset_size < needed_images(pt, args.confidence):
            p.error(f"--subset-size {args.subset_size} cannot show {pt} pt at "
                    f"{args.confidence}; give at least {needed_images(pt, args.confidence)}")
    models = subjects() if args.models == "all" else args.models.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models").mkdir(exist_ok=True)
    report = {"cpu": cpu_model(), "method": args.method, "confidence": args.confidence,
              "subsets": args.subsets, "subset_size": args.subset_size, "seed": args.seed,
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "results": {}}
    t0 = time.time()
    for name in models:
        cases = [tuple(c.split("@")) for c in args.cases.split(",")]
        records, counts, vy, ty = score_candidates(name, args.method, args.threads,
                                                   args.out / "models", cases)
        for (target, backend), record in records.items():
            key = f"{name} {target}@{backend}"
            report["results"][key] = {
                "grid": counts,
                "test_losses_by_k": {str(k): int(Paired.from_predictions(
                    record["fp32"][1], record[k][1], ty).losses) for k in counts},
                "budgets": coverage(record, counts, vy, ty, budgets, args.confidence,
                                    args.subsets, args.subset_size, args.seed)}
            for pt, c in report["results"][key]["budgets"].items():
                print(f"{key} PT={pt}: {c['hold']}/{c['published']} hold, {c['refused']} "
                      f"refused, K {c['k_chosen']}, worst test loss {c['test_loss_pt_max']}")
        if args.nncf:
            ov = records.get(("openvino", "openvino")) or records.get(("tensorrt", "openvino"))
            draws = subset_draws(len(vy), args.subsets, args.subset_size, args.seed)[:args.nncf]
            report.setdefault("nncf_accuracy_control", {})[name] = nncf_coverage(
                name, ov["fp32"][1], budgets, draws, args.threads, args.out / "models")
        report["minutes"] = round((time.time() - t0) / 60, 1)
        atomic_write_text(args.out / "coverage.json", json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
