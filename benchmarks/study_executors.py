"""The study's executors against the study before them: wall time of one small study, run
by the study before the trial grid (``--baseline``: a checkout of it), by the local executor
and by the Ray executor on a one-node cluster on this machine, in interleaved rounds, each in
a fresh process and a fresh ``--out``. The Ray figure includes starting and stopping the
cluster (``total``) and also excludes it (``study``).

``--overhead OUT`` instead measures only what the grid adds (file and test-set hashes, trial
files) on a finished study folder.

Run it with Ray on loopback only (a network namespace of its own):

    unshare -n sh -c 'ip link set lo up && exec python -m benchmarks.study_executors \\
        --baseline /tmp/old-checkout --rounds 3 --out benchmarks/results/study_executors.json'
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(num_test=256, num_calib=128, methods=("minmax",), engines=("onnxruntime", "openvino"),
              big=False, iters=5, anchors=(), threads=2)

# one study in a fresh process: prints {"study": seconds} on its last line
_ARM = r'''
import json, os, sys, time
config = json.loads(sys.argv[1]); out = sys.argv[2]; arm = sys.argv[3]
from engine.study import run_study
kwargs = dict(out=out, log=lambda m: None, **config)
cluster = None
if arm == "ray":
    os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"), exist_ok=True)
    from ray.cluster_utils import Cluster
    from engine.study.ray_executor import RayExecutor
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=os.cpu_count(), node_ip_address="127.0.0.1", include_dashboard=False,
        temp_dir=os.path.join(os.environ["RAY_TMPDIR"], "ray")))
    kwargs["executor"] = executor = RayExecutor(cluster.address)
try:
    t = time.perf_counter()
    run_study(**kwargs)
    study = time.perf_counter() - t
finally:
    if cluster is not None:
        executor.shutdown()
        cluster.shutdown()
print(json.dumps({"study": study}))
'''


def run_arm(name: str, arm: str, code_root: Path, work: Path, i: int) -> dict:
    out = work / f"{name}-{i}"
    env = {**os.environ, "PYTHONPATH": str(code_root), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="rb", dir="/tmp")}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _ARM, json.dumps(CONFIG), str(out), arm],
                          env=env, cwd=code_root, capture_output=True, text=True)
    total = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{arm} failed:\n{done.stderr[-4000:]}")
    return {"total": total, **json.loads(done.stdout.strip().splitlines()[-1])}


def overhead(study_folder: Path, num_test=None) -> dict:
    """What the trial grid adds to a study, measured on a finished study folder: hashing its
    model files (per GB), hashing the test set (``num_test`` images, None: all 10k), and
    saving and loading one trial's row."""
    from engine.evaldata import load_eval_data
    from engine.models.registry import get_config
    from engine.study.store import TrialStore, data_digest, file_digest
    files = [p for p in (study_folder / "models").iterdir() if p.suffix in (".onnx", ".xml")]
    t = time.perf_counter()
    for p in files:
        file_digest(p)
    file_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in files)
    x, y = load_eval_data(None, get_config("inception_resnet_v2_fmnist"), num_test)
    t = time.perf_counter()
    data_digest(x, y)
    data_s = time.perf_counter() - t
    store = TrialStore(study_folder / "trials")
    keys = [p.stem for p in store.folder.glob("*.json")]
    with tempfile.TemporaryDirectory() as tmp:
        again = TrialStore(tmp)
        t = time.perf_counter()
        for key in keys:
            again.save(key, {}, store.load(key))
            again.load(key)
        trial_s = (time.perf_counter() - t) / max(1, len(keys))
    return {"model_files_gb": size / 1e9, "file_hash_s": file_s,
            "file_hash_s_per_gb": file_s / (size / 1e9), "test_images": int(len(x)),
            "test_set_mb": x.nbytes / 1e6, "data_hash_s": data_s,
            "trial_save_load_s": trial_s, "trials": len(keys)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="a checkout of the study before the grid")
    ap.add_argument("--overhead", metavar="STUDY_OUT",
                    help="only measure what the grid adds (hashes, trial files) on a "
                         "finished study folder, on the whole 10k test set")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-ray", dest="ray", action="store_false")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from engine.study.timing import cpu_class
    if args.overhead:
        result = {"cpu": cpu_class(), "loadavg_1min": os.getloadavg()[0],
                  **overhead(Path(args.overhead))}
        print(json.dumps(result, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return
    if not args.baseline:
        ap.error("--baseline is needed (or --overhead)")
    arms = [("before", Path(args.baseline)), ("local", ROOT)] + (
        [("ray", ROOT)] if args.ray else [])
    times = {name: [] for name, _ in arms}
    loads = []
    with tempfile.TemporaryDirectory(prefix="study-exec-") as work:
        for i in range(args.rounds):
            order = arms if i % 2 == 0 else arms[::-1]      # alternate who goes first
            for name, root in order:
                loads.append(os.getloadavg()[0])
                times[name].append(run_arm(name, "ray" if name == "ray" else "local", root,
                                           Path(work), i))
                print(name, times[name][-1], "loadavg", loads[-1], flush=True)

    def ratio(arm, key):
        return [a[key] / b["total"] for a, b in zip(times[arm], times["before"])]
    result = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in CONFIG.items()},
              "cpu": cpu_class(), "loadavg_1min": loads, "times": times,
              "local_vs_before": ratio("local", "total")}
    if args.ray:
        result["ray_total_vs_local"] = [r["total"] / l["total"]
                                        for r, l in zip(times["ray"], times["local"])]
        result["ray_study_vs_local"] = [r["study"] / l["study"]
                                        for r, l in zip(times["ray"], times["local"])]
    for k in [k for k in result if k.endswith(("_before", "_local"))]:
        result[k + "_median"] = statistics.median(result[k])
    print(json.dumps({k: v for k, v in result.items() if k.endswith("_median")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
