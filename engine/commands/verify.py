"""``inception-engine verify``: parity of an exported file on an engine against PyTorch."""
from __future__ import annotations

from ..errors import InputError
from . import add_command, in_range, non_negative_int, positive_int


def register(sub):
    p = add_command(sub, "verify", "inception-engine verify irv2.onnx --backend openvino "
                    "--weights w.pth --batch 8", help="compare an engine's outputs with the "
                    "PyTorch reference (layer-wise localization on failure)")
    p.add_argument("file", metavar="MODEL.onnx", help="the exported model file")
    p.add_argument("--model", help="registered variant of the reference (default: the file's "
                                   "own config)")
    p.add_argument("--weights", help="reference weights: 'timm', 'bundled' or a checkpoint; "
                                     "default: random init with --seed, as export makes it")
    p.add_argument("--allow-non-finite-weights", action="store_true",
                   help="load a reference checkpoint holding NaN/Inf (refused by default)")
    p.add_argument("--width", type=in_range(0, 4), help="reference width (default: the file's)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the random reference and inputs")
    p.add_argument("--backend", help="engine to verify (default: what engine.load picks)")
    p.add_argument("--precision", help="fp32 | bf16 | fp16 | int8 (default: the file's)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for the engine")
    p.add_argument("--batch", type=positive_int, default=4,
                   help="number of random inputs (default 4)")
    p.add_argument("--localize", action="store_true",
                   help="compare layer by layer even when the outputs pass")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args):
    import warnings
    from ..loader import ConfigUnknownWarning, load
    from ..models.registry import create_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigUnknownWarning)
        rt = load(args.file, backend=args.backend, precision=args.precision, threads=args.threads)
    with rt:
        cfg = rt.config
        name = args.model or (cfg.name if cfg is not None else None)
        if name is None:
            raise InputError(f"{args.file}: config unknown (no Inception metadata); name the "
                             "reference with --model NAME [--weights W]")
        width = args.width if args.width is not None else (
            cfg.width if cfg is not None and cfg.name == name else 1.0)
        ncls = cfg.num_classes if cfg is not None and cfg.name == name else None
        model = create_model(name, weights=args.weights, width=width, num_classes=ncls,
                             seed=args.seed, allow_non_finite=args.allow_non_finite_weights)
        from ..parity import verify
        report = verify(rt, model, args.batch, localize=True if args.localize else "auto",
                        seed=args.seed)
    if args.json:
        print(report.to_json(indent=2))
    else:
        print(report)
    return 0 if report.passed else 1
