"""``inception-engine study``: INT8 accuracy versus speed for every engine and method."""
from __future__ import annotations

from ..anchors import ANCHORS
from ..study.options import StudyOptions as Defaults
from ..study.row import SUBJECT
from . import add_command, confidence, in_range, non_negative_int, positive_int


def register(sub):
    p = add_command(sub, "study", "inception-engine study --methods entropy,percentile "
                    "--engines openvino,onnxruntime --num-test 2000 --out study",
                    help="INT8 accuracy-vs-speed study (tables + Pareto plot)")
    p.add_argument("--model", default=SUBJECT,
                   help="registered variant (default: the shipped Fashion-MNIST IR-v2 "
                        "subject); inception_v4_fmnist, inception_resnet_v1_fmnist: the other "
                        "shipped subjects; 'all': the three, in OUT/<model>/, and "
                        "OUT/comparison.md side by side")
    p.add_argument("--weights", default="bundled",
                   help="'bundled', 'timm', a checkpoint path, or 'random' (speed only)")
    p.add_argument("--data", help="labelled test set: .npz (images, labels) or a folder of "
                                  "class folders (default: the shipped Fashion-MNIST test set)")
    p.add_argument("--calib", help="calibration images: folder, .npy/.npz (default: the first "
                                   "--num-calib images of the shipped 2k train split)")
    p.add_argument("--methods", default=",".join(Defaults.methods),
                   help="comma list of calibration methods (default: all)")
    p.add_argument("--engines", help="comma list (default: every engine available here)")
    p.add_argument("--num-test", type=positive_int, help="use only the first N test images")
    p.add_argument("--num-calib", type=positive_int, default=Defaults.num_calib,
                   help=f"calibration images (default {Defaults.num_calib})")
    p.add_argument("--threads", type=positive_int, default=Defaults.threads,
                   help=f"CPU threads (default {Defaults.threads})")
    p.add_argument("--iters", type=positive_int, default=Defaults.iters,
                   help=f"timed runs per latency figure (default {Defaults.iters})")
    p.add_argument("--no-299", dest="big", action="store_false",
                   help="skip the latency measurement at the canonical 299 shape (the "
                        "architecture at full width, random weights)")
    p.add_argument("--auto-exclude", type=non_negative_int, default=Defaults.auto_exclude,
                   metavar="K",
                   help="add a row keeping the K most sensitive layers in float")
    p.add_argument("--no-cpu-uint8", dest="cpu_uint8", action="store_false",
                   help="skip OpenVINO's uint8-after-ReLU files (target openvino rows); only "
                        "the signed files (target tensorrt) are studied")
    p.add_argument("--anchors", help="comma list of third-party quantizers to run beside ours, "
                                     f"from: {', '.join(ANCHORS)} (default: every one "
                                     "installed, once the 'anchors' extra is: "
                                     "pip install -e .[anchors])")
    p.add_argument("--no-anchors", dest="anchors", action="store_const", const="",
                   help="run no third-party quantizer")
    p.add_argument("--max-drop", type=in_range(0.0, 100.0), metavar="PT",
                   help="add rows quantized to an accuracy budget: at most PT points of the "
                        "validation images lost (FP32 right, INT8 wrong) at --confidence "
                        "(ours per target, and NNCF's accuracy control when the nncf anchor "
                        "runs)")
    p.add_argument("--confidence", type=confidence, default=Defaults.confidence,
                   help="confidence of the --max-drop bound, in [0.5, 1) (default "
                        f"{Defaults.confidence:g})")
    p.add_argument("--val", help="labelled validation split for --max-drop (.npz or a folder "
                                 "of class folders): no test image and no image the model "
                                 "was trained on; needed with --data (default: the shipped "
                                 "5,000 held-out Fashion-MNIST train images)")
    p.add_argument("--num-val", type=positive_int,
                   help="use only the first N validation images for --max-drop")
    p.add_argument("--out", default="study", help="output folder; each finished trial is "
                                                   "kept in OUT/trials/, and a rerun with the "
                                                   "same --out skips those")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run the trials on a Ray cluster ('auto': the one this machine "
                        "joined; or the head's HOST:PORT from `ray start --head`): accuracy "
                        "in image shards on every node, speed once per CPU class on a whole "
                        "node (pip install -e .[cluster]); default: in this process")
    p.add_argument("--cpu-classes", metavar="A,B",
                   help="with --ray: time the trials only on these CPU classes (the names "
                        "the report gives them, or the nodes' cpu_class:NAME labels)")
    p.add_argument("--paired-rounds", type=non_negative_int, default=Defaults.paired_rounds,
                   metavar="N",
                   help="time each engine's batch-1 latency in N rounds interleaved with the "
                        "PyTorch reference's; the × torch column is then the median of the "
                        "rounds' ratios with their p10/p90 (default: not paired)")
    p.add_argument("--force", action="store_true",
                   help="measure every trial again, even those finished in OUT/trials/")
    p.set_defaults(func=run)


def run(args):
    from ..errors import InputError
    from ..study import run_study
    executor = None
    if args.ray:
        from ..study.ray_executor import RayExecutor, ray_address
        classes = [c for c in args.cpu_classes.split(",") if c] if args.cpu_classes else None
        executor = RayExecutor(ray_address(args.ray), cpu_classes=classes)
    elif args.cpu_classes:
        raise InputError("--cpu-classes chooses among a Ray cluster's CPU classes: add --ray "
                         "auto|ADDRESS (without --ray the study runs on this machine only)")
    methods = [m for m in args.methods.split(",") if m]
    engines = [e for e in args.engines.split(",") if e] if args.engines else None
    weights = None if args.weights == "random" else args.weights
    anchors = None if args.anchors is None else [a for a in args.anchors.split(",") if a]
    try:
        run_study(model=args.model, weights=weights, data=args.data, calib=args.calib,
                  methods=methods, engines=engines, out=args.out, num_test=args.num_test,
                  num_calib=args.num_calib, threads=args.threads, iters=args.iters, big=args.big,
                  auto_exclude=args.auto_exclude, cpu_uint8=args.cpu_uint8, anchors=anchors,
                  max_drop=args.max_drop, val=args.val, num_val=args.num_val,
                  confidence=args.confidence, force=args.force, executor=executor,
                  paired_rounds=args.paired_rounds)
    finally:
        if executor is not None:
            executor.shutdown()
    return 0
