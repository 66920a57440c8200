"""``inception-engine models``: the registered variants with parameters and compute."""
from __future__ import annotations

import json

from . import add_command


def register(sub):
    p = add_command(sub, "models", "inception-engine models --json",
                    help="list model variants (params, GMACs, input size)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args):
    from ..models.registry import get_config, list_models
    from ..models.stats import model_stats
    rows = []
    for name in list_models():
        s = model_stats(name)
        s["description"] = get_config(name).description
        rows.append(s)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':28} {'params':>12} {'GMACs':>7} {'input':>11} {'classes':>7}  description")
    for r in rows:
        c, h, w = r["input_size"]
        classes = r["num_classes"] or "emb"
        print(f"{r['name']:28} {r['params']:>12,} {r['gmacs']:>7.2f} {f'{c}x{h}x{w}':>11} "
              f"{classes!s:>7}  {r['description']}")
    return 0
