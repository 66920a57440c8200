"""``inception-engine serve-export``: a Triton Inference Server model repository entry."""
from __future__ import annotations

from . import add_command, non_negative_int, positive_int
from ..tritonserver import TARGETS


def register(sub):
    p = add_command(sub, "serve-export", "inception-engine serve-export irv2.plan --repo "
                    "models/ --name irv2 --max-batch 32", help="export a .plan or .onnx to a "
                    "Triton Inference Server model repository")
    p.add_argument("model_file", help="a TensorRT .plan (with its sidecar) or an .onnx file")
    p.add_argument("--repo", required=True, help="model repository directory")
    p.add_argument("--name", help="model name (default: the file's stem)")
    p.add_argument("--max-batch", type=positive_int,
                   help="max_batch_size (default: the plan's profile maximum, 32 for ONNX)")
    p.add_argument("--version", type=positive_int, default=1, dest="model_version", metavar="N",
                   help="model version directory (default 1)")
    p.add_argument("--instances", type=_instances, default=1,
                   help="instances per device (default 1), or auto (--target python on "
                        "OpenVINO): time the model at batch 8 under OpenVINO's LATENCY and "
                        "THROUGHPUT hints and deploy the faster one's stream count, the "
                        "threads split between the instances")
    p.add_argument("--preferred", type=positive_int, nargs="+", metavar="N",
                   help="preferred dynamic batch sizes (default: opt and max batch)")
    p.add_argument("--max-queue-delay-us", type=non_negative_int, default=100,
                   help="dynamic batcher's max queue delay in microseconds (default 100)")
    p.add_argument("--kind", choices=["gpu", "cpu", "auto"],
                   help="instance kind (default: gpu for a plan, auto for ONNX)")
    p.add_argument("--onnx", help="for a plan without a sidecar: the ONNX it was built from")
    p.add_argument("--target", choices=list(TARGETS),
                   help="server backend: python (this package's runtime inside the server; the "
                        "default for .onnx without a GPU), tensorrt_plan (the default for "
                        ".plan), onnxruntime_onnx (the default for .onnx with a GPU), openvino")
    p.add_argument("--engine", help="--target python: the engine engine.load uses in the "
                   "server (default: its own pick, OpenVINO on a CPU)")
    p.add_argument("--threads", type=positive_int,
                   help="--target python: CPU threads per instance (default: the engine's)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="no all-zeros warm-up requests before the model is READY")
    p.add_argument("--input", choices=["tensor", "encoded"], default="tensor",
                   dest="input_kind", help="tensor: the model's preprocessed float input "
                   "(default); encoded: JPEG/PNG bytes, one image per request as a UINT8 "
                   "[1, N] tensor named 'image', decoded and preprocessed in the server "
                   "(--target python, its default)")
    p.add_argument("--max-image-bytes", type=positive_int, metavar="N",
                   help="--input encoded: refuse an image over N bytes (default 32 MiB)")
    p.add_argument("--max-image-pixels", type=positive_int, metavar="N",
                   help="--input encoded: refuse an image over N pixels, from its header, "
                        "before decoding (default 40,000,000)")
    p.add_argument("--max-queue-size", type=non_negative_int, default=0, metavar="N",
                   help="requests queued per model before new ones are rejected at once "
                        "(HTTP 503, gRPC UNAVAILABLE; default 0: no limit)")
    k = p.add_argument_group("KServe (an InferenceService manifest for this repository)")
    k.add_argument("--kserve", metavar="FILE", help="also write the InferenceService manifest "
                   "(serving.kserve.io/v1beta1, Triton runtime) to FILE")
    k.add_argument("--storage-uri", metavar="URI", help="with --kserve: where the repository "
                   "is copied for the cluster (s3://, gs://, pvc://, ...)")
    k.add_argument("--kserve-image", metavar="IMAGE", help="with --kserve: the server image "
                   "(needed by --target python: one with this package installed)")
    k.add_argument("--kserve-gpus", type=non_negative_int, metavar="N",
                   help="with --kserve: GPUs per replica (default: 1 for a GPU instance kind, "
                        "such as a plan's, else 0)")
    k.add_argument("--max-replicas", type=positive_int, default=4,
                   help="with --kserve: most replicas the autoscaler starts (default 4)")
    p.set_defaults(func=run)


def _instances(text: str):
    import argparse
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} (or auto: measured on OpenVINO)") from None


def _target(args) -> str:
    """The server backend the entry will have (what export_triton picks by default)."""
    from ..tritonserver import default_target
    return args.target or ("python" if args.input_kind == "encoded"
                           else default_target(args.model_file))


def _auto_instances(args):
    """``--instances auto``: the measured instance count and threads (engine.tritonserver's
    measured_instances), printed with what was measured."""
    from ..errors import InputError
    from ..tritonserver import measured_instances
    target = _target(args)
    if target != "python" or args.engine not in (None, "openvino"):
        raise InputError("--instances auto times this package's OpenVINO runtime: it needs "
                         f"--target python on the openvino engine, not {target}"
                         f"{' / ' + args.engine if args.engine else ''}; give a number instead")
    batch = min(8, args.max_batch or 8)
    chosen = measured_instances(args.model_file, batch=batch, threads=args.threads)
    for hint, m in chosen["measured"].items():
        print(f"{hint:>10} hint: {m['images_per_s']:.1f} images/s at batch {batch}, "
              f"{m['streams']} stream(s)")
    print(f"instances: {chosen['instances']} ({chosen['hint']} hint's streams), "
          f"{chosen['threads']} thread(s) each")
    return chosen["instances"], chosen["threads"]


def run(args):
    from ..errors import InputError
    from ..tritonserver import export_triton, model_name
    # the manifest's inputs are checked before the timing and the entry, so a bad one leaves
    # nothing written
    if bool(args.kserve) != bool(args.storage_uri):
        raise InputError("--kserve FILE and --storage-uri URI go together: the manifest names "
                         "the URI the repository is copied to")
    if args.kserve:
        from ..kserve import check_request
        check_request(args.storage_uri, model_name(args.name, args.model_file),
                      _target(args) == "python", args.kserve_image)
    if args.instances == "auto":
        args.instances, args.threads = _auto_instances(args)
    d = export_triton(args.model_file, args.repo, name=args.name, max_batch=args.max_batch,
                      version=args.model_version, instances=args.instances,
                      preferred_batch_sizes=args.preferred,
                      max_queue_delay_us=args.max_queue_delay_us,
                      kind=f"KIND_{args.kind.upper()}" if args.kind else None, onnx=args.onnx,
                      target=args.target, engine=args.engine, threads=args.threads,
                      warmup=args.warmup, input_kind=args.input_kind,
                      max_image_bytes=args.max_image_bytes,
                      max_image_pixels=args.max_image_pixels,
                      max_queue_size=args.max_queue_size)
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        print(f)
    if args.kserve:
        from ..kserve import inference_service, write_manifest
        manifest = inference_service(d, args.storage_uri, image=args.kserve_image,
                                     max_replicas=args.max_replicas, gpus=args.kserve_gpus)
        print(f"{write_manifest(args.kserve, manifest)} (copy {d.parent} to "
              f"{args.storage_uri}, then kubectl apply -f {args.kserve})")
    print(f"serve with: inception-engine serve {d.parent}\n"
          f"        or: tritonserver --model-repository {d.parent}")
    return 0
