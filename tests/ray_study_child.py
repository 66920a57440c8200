"""The Ray half of tests/test_study_ray.py, run by it as a child process inside a network
namespace of its own (loopback only), so every Ray process listens and connects on
127.0.0.1. Not a test module: ``python tests/ray_study_child.py OUT TEMP_DIR``.

It starts a real multi-node cluster (``ray.cluster_utils.Cluster``: a head and two worker
nodes, one CPU each, the second labelled with another CPU class), runs the same small study
with the local executor and with the Ray executor, again with a worker node removed in the
middle, once more on the finished folder, and on a copy of a finished folder without the
labelled class's trials; writes each study's outputs under OUT and its
log lines to OUT/<name>.log. The parent compares them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# ONNX Runtime's accuracy is computed once and shared by the classes, OpenVINO's per class
SMALL = dict(num_test=40, num_calib=16, methods=("minmax",), cpu_uint8=False,
             engines=("onnxruntime", "openvino"), big=False, iters=2, eval_batch=8,
             anchors=(), threads=1)


def main(out: Path, temp_dir: str) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from engine.study import LocalExecutor, run_study
    from engine.study.ray_executor import LABEL_PREFIX, RayExecutor

    def study(name, executor, folder=None):
        lines = []
        run_study(out=out / (folder or name), executor=executor, log=lines.append, **SMALL)
        (out / f"{name}.log").write_text("\n".join(lines) + "\n")

    study("local", LocalExecutor())
    # Ray's session files, and the address file it writes for `ray.init("auto")`, go under
    # the test's own folder (RAY_TMPDIR, set by the parent), not the machine's /tmp/ray
    (Path(temp_dir) / "ray").mkdir(exist_ok=True)
    node = dict(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node, "temp_dir": str(Path(temp_dir) / "ray")})
    try:
        doomed = cluster.add_node(**node)
        cluster.add_node(**node, resources={f"{LABEL_PREFIX}other": 1})
        cluster.wait_for_nodes()
        executor = RayExecutor(cluster.address)
        study("ray", executor)
        first = (out / "ray" / "results.json").read_text()
        study("ray-rerun", executor, folder="ray")      # the same --out again
        (out / "ray-first.json").write_text(first)
        events = []

        def remove_after_first(line):       # a worker node dies in the middle of the study
            events.append(line)
            if len(events) == 1:
                cluster.remove_node(doomed, allow_graceful=False)
        executor.log = remove_after_first
        study("ray-killed", executor)
        (out / "killed-events.json").write_text(json.dumps(events))
        executor.log = lambda line: None
        resume_one_class(out, study, executor)
        (out / "classes.json").write_text(json.dumps(executor.classes()))
        executor.log = lambda line: None
        failing_trial(out, executor)
    finally:
        ray.shutdown()
        cluster.shutdown()


def resume_one_class(out: Path, study, executor) -> None:
    """The finished folder with the labelled class's trials gone, resumed: a trial whose
    accuracy is shared takes its predictions from the other class's stored row, an OpenVINO
    trial computes its own on the labelled node."""
    import shutil
    shutil.copytree(out / "ray-killed", out / "ray-resumed")
    for path in (out / "ray-resumed" / "trials").glob("*.json"):
        if json.loads(path.read_text())["trial"]["cpu_class"] == "other":
            path.unlink()
    study("ray-resumed", executor)


def failing_trial(out: Path, executor) -> None:
    """A trial whose file no engine can run (an operator nobody defines), beside the
    reference: it must come back as a row carrying the error, the reference row intact."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from engine.models.registry import create_model
    from engine.study.evaluation import Bench
    from engine.study.executors import Plan
    from engine.study.grid import Trial
    from engine.study.store import TrialStore
    bad = out / "unrunnable.onnx"
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"], domain="nowhere")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 75, 75])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])), bad)
    model = create_model("inception_resnet_v2_fmnist", weights="bundled")
    rng = np.random.default_rng(0)
    bench = Bench(rng.standard_normal((16, 3, 75, 75)).astype(np.float32),
                  rng.integers(0, 10, 16), threads=1, iters=2, eval_batch=8)
    trials = [Trial("torch", "fp32", path=bad), Trial("onnxruntime", "fp32", path=bad)]
    rows = executor.run(Plan(trials, bench, TrialStore(out / "failing" / "trials"), model),
                        log=lambda line: None)
    (out / "failing.json").write_text(json.dumps(
        [{"engine": r.engine, "cpu_class": r.cpu_class, "top1": r.top1, "note": r.note}
         for r in rows]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
