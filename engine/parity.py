"""``engine.verify`` (:func:`verify`): parity of an engine against the PyTorch reference, output
and layer by layer.

What is measured on the final output (the reference's numbers are the truth):

- ``max_abs_err``: max |engine - reference| over every element;
- ``range_rel_err``: ``max_abs_err`` divided by the reference's output range (max - min over
  all elements). This is the FP32 criterion: logits have no natural scale, and elementwise
  relative errors blow up near zero;
- ``max_rel_err``: max |d| / max(|ref|, 1e-3 x range), elementwise (for information);
- ``cosine_min`` / ``cosine_mean``: cosine similarity of each sample's output vector;
- ``top1_agreement``: fraction of samples whose arg-max agrees, with its 95% Clopper-Pearson
  exact interval ``top1_agreement_ci`` over the ``top1_agreement_images`` samples
  (``engine.intervals``; ``interval_method`` names it): a sample's outcome is agree or not,
  so on few samples the fraction alone overstates what is known; ``top5_overlap``: mean
  |top-5(engine) ∩ top-5(reference)| / 5 (k = min(5, classes));
- ``smallest_passing``: the tightest tolerance each criterion would have accepted.

Default criteria by precision (``DEFAULT_TOLERANCES``; override with ``tolerance=``):

=========  ====================  ============  =============  ===============
precision  max abs err / range   cosine (min)  top-1 agree    top-5 overlap
=========  ====================  ============  =============  ===============
fp32       <= 1e-4               -             = 100%         -
fp16       -                     >= 0.999      >= 98%         >= 95%
bf16       -                     >= 0.99       >= 95%         >= 90%
int8       -                     >= 0.98       >= 90%         >= 80%
=========  ====================  ============  =============  ===============

Reduced precisions are judged on agreement, as the engine is meant to be used; their
agreement thresholds assume outputs with real margins (trained weights, real images). On a
randomly initialised network the logits of random inputs are nearly tied, so judge those on
cosine (pass ``tolerance={"top1": None, "top5": None}``). An embedding output (``config.output
== "embedding"``) is judged on cosine only, at the same thresholds, whatever the precision
(fp32: cosine >= 0.99999 on top of the range criterion).

Layer-wise localization (on failure, or with ``localize=True``): the engine exposes its
intermediate tensors (extra ONNX outputs), the reference its module outputs (forward hooks).
They are matched by the PyTorch module path that the ONNX node names carry: the output of a
module is the output of the last node (in graph order) under its name scope, so
``/repeat/repeat.0/branch1/branch1.0/relu/Relu`` is the output of unit
``repeat.0.branch1.0`` and ``/repeat/repeat.0/relu/Relu`` that of block ``repeat.0`` (BatchNorm
and the residual scale are folded in the graph, which changes neither module output).
Compared units: conv-BN-ReLU units, residual blocks, branch concats and pools.

Each layer's error is ``max |d| / range(reference layer)``. The first divergent layer is the
first, in execution order, whose error both exceeds ``JUMP_FLOOR x tol`` and is more than
``JUMP_RATIO`` times the largest error of all layers before it (``tol`` = the precision's
``layer`` tolerance). Errors that only grow gradually have no jump; the report then names the
first layer over ``JUMP_FLOOR x tol``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .export import module_path, weights_fingerprint
from .intervals import CONFIDENCE, METHOD_PROPORTION, clopper_pearson
from .models.capture import compared_modules
from .onnxmeta import META_WEIGHTS, load_onnx, normalize_precision
from .runtime import count_option

JUMP_FLOOR = 10.0
JUMP_RATIO = 10.0


@dataclass(frozen=True)
class Tolerance:
    range_rel: Optional[float] = None   # max abs err / output range
    cosine: Optional[float] = None      # min per-sample cosine similarity
    top1: Optional[float] = None        # min top-1 agreement (fraction)
    top5: Optional[float] = None        # min mean top-5 overlap (fraction)
    layer: float = 1e-4                 # per-layer error floor used for localization


DEFAULT_TOLERANCES: Dict[str, Tolerance] = {
    "fp32": Tolerance(range_rel=1e-4, top1=1.0, layer=1e-4),
    "fp16": Tolerance(cosine=0.999, top1=0.98, top5=0.95, layer=1e-2),
    "bf16": Tolerance(cosine=0.99, top1=0.95, top5=0.90, layer=3e-2),
    "int8": Tolerance(cosine=0.98, top1=0.90, top5=0.80, layer=1e-1),
}


@dataclass
class LayerDiff:
    index: int            # execution order among the compared layers
    module: str           # PyTorch module path
    tensor: str           # engine tensor name
    shape: tuple
    max_abs: float
    range_rel: float      # max_abs / range of the reference tensor
    cosine: float


@dataclass
class ParityReport:
    engine: str
    reference: str
    model: Optional[str]
    config_known: bool
    precision: str
    n_samples: int
    output_shape: tuple
    max_abs_err: float
    mean_abs_err: float
    max_rel_err: float
    range_rel_err: float
    output_range: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float
    top1_agreement_ci: Tuple[float, float]   # exact interval on top1_agreement (fractions)
    top1_agreement_images: int               # the samples the agreement is counted over
    interval_confidence: float
    interval_method: str
    top5_overlap: float
    topk: int
    tolerance: Dict[str, Optional[float]]
    smallest_passing: Dict[str, float]
    passed: bool
    failures: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    layers: Optional[List[LayerDiff]] = None
    first_divergent: Optional[str] = None
    divergent_block: Optional[str] = None
    divergence: Optional[str] = None     # how it was found ("jump" | "over tolerance")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["output_shape"] = list(self.output_shape)
        d["top1_agreement_ci"] = list(self.top1_agreement_ci)
        if self.layers is not None:
            for l in d["layers"]:
                l["shape"] = list(l["shape"])
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        t = self.tolerance
        status = "PASSED" if self.passed else "FAILED"
        model = self.model if self.config_known else "config unknown (foreign ONNX)"
        lines = [f"parity {self.engine} vs {self.reference}: {model}, {self.n_samples} samples, "
                 f"output {list(self.output_shape)}  ->  {status}", ""]
        rows = [("max abs error", f"{self.max_abs_err:.3e}", "", ""),
                ("max abs error / range", f"{self.range_rel_err:.3e}",
                 _thr("<=", t.get("range_rel")), _ok(self.range_rel_err, t.get("range_rel"), le=True)),
                ("mean abs error", f"{self.mean_abs_err:.3e}", "", ""),
                ("max rel error", f"{self.max_rel_err:.3e}", "", ""),
                ("output range", f"{self.output_range:.4g}", "", ""),
                ("cosine (min / mean)", f"{self.cosine_min:.6f} / {self.cosine_mean:.6f}",
                 _thr(">=", t.get("cosine")), _ok(self.cosine_min, t.get("cosine"))),
                ("top-1 agreement", _with_interval(self.top1_agreement, self.top1_agreement_ci,
                                                   self.interval_confidence),
                 _thr(">=", t.get("top1"), pct=True), _ok(self.top1_agreement, t.get("top1"))),
                (f"top-{self.topk} overlap", f"{self.top5_overlap * 100:.1f}%",
                 _thr(">=", t.get("top5"), pct=True), _ok(self.top5_overlap, t.get("top5")))]
        lines.append(f"  {'metric':24} {'value':>28}  {'criterion':>12}  ")
        for name, val, thr, ok in rows:
            lines.append(f"  {name:24} {val:>28}  {thr:>12}  {ok}")
        sp = self.smallest_passing
        lines.append("")
        lines.append("  smallest tolerance that passes: "
                     + ", ".join(f"{k} {v:.3g}" for k, v in sp.items()))
        for f in self.failures:
            lines.append(f"  FAIL: {f}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.layers is not None:
            lines.append("")
            lines.append(_layer_table(self))
        return "\n".join(lines)


def _with_interval(v: float, ci, confidence: float) -> str:
    """``99.2% (95% CI 98.1–99.7)``: a fraction and its interval, in percent."""
    return (f"{v * 100:.1f}% ({confidence * 100:g}% CI {ci[0] * 100:.1f}\u2013"
            f"{ci[1] * 100:.1f})")


def _thr(op, v, pct=False):
    if v is None:
        return "-"
    return f"{op} {v * 100:g}%" if pct else f"{op} {v:g}"


def _ok(v, thr, le=False):
    if thr is None:
        return ""
    return "ok" if ((v <= thr) if le else (v >= thr)) else "FAIL"


def _layer_table(r: ParityReport, context: int = 6) -> str:
    layers = r.layers or []
    if not layers:
        return "  layers: none compared"
    head = f"  layer-wise ({len(layers)} layers compared, execution order)"
    if r.first_divergent:
        head += f": first divergent layer {r.first_divergent}"
        if r.divergent_block and r.divergent_block != r.first_divergent:
            head += f" (in block {r.divergent_block})"
        head += f" [{r.divergence}]"
        idx = next(l.index for l in layers if l.module == r.first_divergent)
        shown = layers[max(0, idx - context):idx + context // 2 + 1]
    else:
        head += ": no layer diverges"
        shown = layers[:3] + layers[-3:] if len(layers) > 6 else layers
    out = [head, f"  {'#':>4}  {'module':44} {'max abs':>10} {'/range':>10} {'cosine':>10}"]
    prev = None
    for l in shown:
        if prev is not None and l.index != prev + 1:
            out.append("   ...")
        mark = "  <-- first divergent" if l.module == r.first_divergent else ""
        out.append(f"  {l.index:>4}  {l.module:44} {l.max_abs:10.3e} {l.range_rel:10.3e} "
                   f"{l.cosine:10.6f}{mark}")
        prev = l.index
    return "\n".join(out)


# --------------------------------------------------------------------------- name matching
def module_outputs(proto) -> Dict[str, tuple]:
    """``{module path: (node index, output tensor)}``: the last node under each module's scope."""
    out: Dict[str, tuple] = {}
    for i, node in enumerate(proto.graph.node):
        if not node.name.startswith("/") or not node.output:
            continue
        path = module_path(node.name)
        if not path:
            continue
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            out[".".join(parts[:k])] = (i, node.output[0])
    return out


# --------------------------------------------------------------------------- metrics
def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-300)
    return np.where(both_zero, 1.0, cos)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def _range(x: np.ndarray) -> float:
    r = float(x.max() - x.min()) if x.size else 0.0
    return r if r > 0 else max(float(np.abs(x).max()) if x.size else 0.0, 1e-12)


def _as_numpy(y) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().float().cpu().numpy()
    return np.asarray(y, dtype=np.float32)


def _describe(rt) -> str:
    return f"{getattr(rt, 'backend', type(rt).__name__)}/{getattr(rt, 'precision', '?')}"


# --------------------------------------------------------------------------- verify
def verify(runtime, reference, inputs, precision: Optional[str] = None,
           tolerance=None, localize="auto", localize_samples: int = 2,
           batch_size: Optional[int] = None, onnx_path=None, seed: int = 0) -> ParityReport:
    """Compare ``runtime`` with ``reference`` on ``inputs`` and return a :class:`ParityReport`.

    runtime: an engine (:class:`~engine.runtime.Runtime`). reference: the PyTorch model
    (``nn.Module``, run in FP32 eager) or another Runtime. inputs: NCHW float32 (numpy or
    torch), or an int ``n`` for ``n`` seeded standard-normal images of the config's size.
    precision: criteria to judge by (default: the runtime's). tolerance: a :class:`Tolerance`
    or a dict overriding fields of the default. localize: ``"auto"`` (on failure), ``True`` or
    ``False``; it compares the first ``localize_samples`` samples layer by layer.
    onnx_path: the ONNX graph the engine runs, when ``runtime.path`` is not one.
    """
    reference_rt = _reference_runtime(reference)
    cfg = getattr(runtime, "config", None) or getattr(reference_rt, "config", None)
    x = _input_batch(inputs, runtime, cfg, seed)
    batch_size = _batch_size(batch_size, len(x))
    out = _run_batched(runtime, x, batch_size)
    ref = _run_batched(reference_rt, x, batch_size)
    if out.shape != ref.shape:
        raise InputError(f"output shapes differ: engine {out.shape}, reference {ref.shape}; "
                         "are they the same model?")
    precision = precision or getattr(runtime, "precision", "fp32")
    tol = _criteria(precision, tolerance, embedding=cfg is not None and cfg.output == "embedding")
    metrics = _output_metrics(out, ref)
    failures = _failures(metrics, tol, out)
    config_known = getattr(runtime, "config", None) is not None
    notes = [] if config_known else ["config unknown: the engine's file carries no Inception "
                                     "metadata"]
    notes.extend(_weights_note(runtime, reference_rt))
    report = ParityReport(
        engine=_describe(runtime), reference=_describe(reference_rt),
        model=cfg.name if cfg is not None else None, config_known=config_known,
        precision=precision, n_samples=int(len(x)), output_shape=tuple(out.shape[1:]),
        **metrics,
        tolerance={f.name: getattr(tol, f.name) for f in dataclasses.fields(tol)},
        smallest_passing={"range_rel": metrics["range_rel_err"], "atol": metrics["max_abs_err"],
                          "rtol": metrics["max_rel_err"], "cosine": metrics["cosine_min"],
                          "top1": metrics["top1_agreement"], "top5": metrics["top5_overlap"]},
        passed=not failures, failures=failures, notes=notes)
    if localize is True or (localize == "auto" and failures):
        _localize(report, runtime, reference_rt, x[:max(1, localize_samples)], tol, onnx_path)
    return report


def _input_batch(inputs, runtime, cfg, seed: int) -> np.ndarray:
    """``inputs`` as an NCHW float32 array; an int ``n`` gives ``n`` seeded standard-normal
    images of the engine's input size (else the config's)."""
    if isinstance(inputs, (int, np.integer)) and not isinstance(inputs, bool):
        if inputs < 1:
            raise InputError(f"inputs={int(inputs)} asks for no images: parity is measured per "
                             "image, so pass inputs=n with n >= 1 (a few hundred give a tight "
                             "interval on top-1 agreement), or the images as an NCHW array")
        spec = runtime.inputs[0].shape if getattr(runtime, "inputs", None) else ()
        if len(spec) == 4 and all(d is not None for d in spec[1:]):
            size = tuple(spec[1:])          # the size the engine was exported at
        elif cfg is not None:
            size = tuple(cfg.input_size)
        else:
            raise InputError("inputs=n needs the input size (from the engine's input spec or "
                             "a model config); pass the images as an NCHW array instead")
        inputs = np.random.default_rng(seed).standard_normal(
            (int(inputs), *size)).astype(np.float32)
    x = _as_numpy(inputs)
    if x.ndim != 4:
        raise InputError(f"inputs must be NCHW (4 dims), got shape {x.shape}")
    if x.shape[0] == 0:
        raise InputError(f"inputs hold no images (shape {x.shape}): parity is measured per "
                         "image, so pass at least one (a few hundred give a tight interval on "
                         "top-1 agreement), or inputs=n for n seeded random images")
    return x


def _batch_size(batch_size, n: int) -> int:
    """Images per engine call: ``batch_size``, or all ``n`` in one call when None."""
    try:
        return count_option("batch_size", batch_size) or n
    except InputError:
        raise InputError(f"batch_size must be an integer >= 1 (images per engine call), or None "
                         f"to run all {n} images in one call; got {batch_size!r}") from None


def _run_batched(rt, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([_as_numpy(rt(x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def _criteria(precision: str, tolerance, embedding: bool) -> Tolerance:
    """The tolerance to judge by; an embedding (without an explicit ``tolerance``) is judged
    on cosine only (see the module docstring)."""
    tol = _tolerance(precision, tolerance)
    if embedding and tolerance is None:
        cos = tol.cosine if tol.cosine is not None else 0.99999
        tol = dataclasses.replace(tol, cosine=cos, top1=None, top5=None)
    return tol


def _output_metrics(out: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """The output measures of :class:`ParityReport` (see the module docstring), by field."""
    d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    rng = _range(ref)
    max_abs = float(d.max()) if d.size else 0.0
    denom = np.maximum(np.abs(ref), 1e-3 * rng)
    cos = _cosines(out, ref)
    flat_o, flat_r = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    k = min(5, flat_r.shape[1])
    top_o, top_r = _topk(flat_o, k), _topk(flat_r, k)
    agree = int((flat_o.argmax(1) == flat_r.argmax(1)).sum())
    return {"max_abs_err": max_abs, "mean_abs_err": float(d.mean()) if d.size else 0.0,
            "max_rel_err": float((d / denom).max()) if d.size else 0.0,
            "range_rel_err": max_abs / rng, "output_range": rng,
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "top1_agreement": agree / len(out),
            "top1_agreement_ci": clopper_pearson(agree, len(out), CONFIDENCE),
            "top1_agreement_images": int(len(out)), "interval_confidence": CONFIDENCE,
            "interval_method": METHOD_PROPORTION,
            "top5_overlap": float(np.mean([len(set(a) & set(b)) / k
                                           for a, b in zip(top_o, top_r)])),
            "topk": k}


def _failures(m: Dict[str, float], tol: Tolerance, out: np.ndarray) -> List[str]:
    """One line per criterion of ``tol`` that the metrics ``m`` miss."""
    failures = []
    if tol.range_rel is not None and not m["range_rel_err"] <= tol.range_rel:
        failures.append(f"max abs error {m['max_abs_err']:.3e} is {m['range_rel_err']:.3e} of "
                        f"the output range (allowed {tol.range_rel:g})")
    if tol.cosine is not None and not m["cosine_min"] >= tol.cosine:
        failures.append(f"min cosine similarity {m['cosine_min']:.6f} < {tol.cosine}")
    if tol.top1 is not None and not m["top1_agreement"] >= tol.top1:
        failures.append(f"top-1 agreement {m['top1_agreement'] * 100:.1f}% < "
                        f"{tol.top1 * 100:g}%")
    if tol.top5 is not None and not m["top5_overlap"] >= tol.top5:
        failures.append(f"top-{m['topk']} overlap {m['top5_overlap'] * 100:.1f}% < "
                        f"{tol.top5 * 100:g}%")
    if not np.isfinite(out).all():
        failures.append(f"engine output holds {int((~np.isfinite(out)).sum())} NaN/Inf values")
    return failures


def _weights_note(runtime, reference_rt) -> List[str]:
    sha = (getattr(runtime, "metadata", None) or {}).get(META_WEIGHTS)
    module = getattr(reference_rt, "module", None)
    if not sha or module is None:
        return []
    if weights_fingerprint(module) == sha:
        return []
    return ["the reference's weights are not the ones exported into the file (weights_sha256 "
            "differs): compare against the model that was exported (same --weights / --seed)"]


def _tolerance(precision: str, tolerance) -> Tolerance:
    base = DEFAULT_TOLERANCES.get(normalize_precision(precision) or "fp32", DEFAULT_TOLERANCES["fp32"])
    if tolerance is None:
        return base
    if isinstance(tolerance, Tolerance):
        return tolerance
    if isinstance(tolerance, dict):
        return dataclasses.replace(base, **tolerance)
    raise TypeError(f"tolerance must be a Tolerance or a dict, got {type(tolerance).__name__}")


def _reference_runtime(reference):
    from .runtime import Runtime
    if isinstance(reference, Runtime):
        return reference
    try:
        from torch import nn
    except ImportError:  # pragma: no cover
        nn = None
    if nn is not None and isinstance(reference, nn.Module):
        from .backends.torch import TorchRuntime
        return TorchRuntime(reference.float().eval(), precision="fp32", check_finite=False)
    if callable(reference):
        return _CallableRuntime(reference)
    raise TypeError("reference must be an nn.Module, a Runtime or a callable, got "
                    f"{type(reference).__name__}")


class _CallableRuntime:
    backend, precision, config = "callable", "fp32", None

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


def _engine_graph(runtime, onnx_path):
    p = Path(onnx_path) if onnx_path is not None else getattr(runtime, "path", None)
    if p is None or Path(p).suffix.lower() != ".onnx":
        return None
    return load_onnx(p, load_weights=False)


def _localize(report: ParityReport, runtime, reference_rt, x, tol: Tolerance, onnx_path):
    """Compare the engine and the reference layer by layer on ``x`` and record the layers,
    the first divergent one and its block in ``report``."""
    proto = _engine_graph(runtime, onnx_path)
    if proto is None:
        report.notes.append("layer-wise localization needs the engine's ONNX graph "
                            "(pass onnx_path=...)")
        return
    mod_out = module_outputs(proto)
    by_module = getattr(reference_rt, "module", None) is not None
    wanted = _compared_layers(runtime, reference_rt, mod_out)
    tensors = [mod_out[m][1] for m in wanted]
    try:
        eng = runtime.intermediates(x, tensors)
        ref = reference_rt.intermediates(x, wanted if by_module else tensors)
    except NotImplementedError as e:
        report.notes.append(f"layer-wise localization unavailable: {e}")
        return
    layers: List[LayerDiff] = []
    for m, t in zip(wanted, tensors):
        a, b = eng.get(t), ref.get(m if by_module else t)
        if a is None or b is None or a.shape != b.shape:
            continue
        dd = np.abs(a.astype(np.float64) - b.astype(np.float64))
        mx = float(dd.max()) if dd.size else 0.0
        layers.append(LayerDiff(index=len(layers), module=m, tensor=t, shape=tuple(a.shape),
                                max_abs=mx, range_rel=mx / _range(b),
                                cosine=float(_cosines(a, b).min())))
    report.layers = layers
    name, how = first_divergent(layers, tol.layer)
    report.first_divergent, report.divergence = name, how
    if name is not None:
        anc = [m.module for m in layers if name.startswith(m.module + ".")]
        report.divergent_block = min(anc, key=len) if anc else name
        report.notes.append(f"first divergent layer: {name}"
                            + (f" (block {report.divergent_block})"
                               if report.divergent_block != name else ""))
    elif layers:
        report.notes.append("no compared layer diverges; the difference arises after the last "
                            f"compared layer ({layers[-1].module}), in the head")


def _compared_layers(runtime, reference_rt, mod_out: Dict[str, tuple]) -> List[str]:
    """The module paths to compare, in graph order, one per output tensor."""
    structure = getattr(reference_rt, "module", None)
    if structure is None:  # two engines: the module structure comes from the config
        cfg = getattr(runtime, "config", None) or getattr(reference_rt, "config", None)
        if cfg is not None:
            from .models.registry import create_model
            structure = create_model(cfg.name, width=cfg.width, num_classes=cfg.num_classes)
    if structure is not None:
        wanted = [m for m in compared_modules(structure) if m in mod_out]
    else:  # a foreign graph: every named scope
        wanted = list(mod_out)
    # de-duplicate modules that share an output tensor (a Sequential and its last child):
    # keep the innermost, which is the more specific name
    by_tensor: Dict[str, str] = {}
    for m in wanted:
        t = mod_out[m][1]
        if t not in by_tensor or len(m) > len(by_tensor[t]):
            by_tensor[t] = m
    return sorted(set(by_tensor.values()), key=lambda m: (mod_out[m][0], -len(m)))


def first_divergent(layers: Sequence[LayerDiff], tol: float):
    """``(module, how)`` of the first layer whose error jumps (see the module docstring)."""
    worst = 0.0
    floor = JUMP_FLOOR * tol
    for l in layers:
        if l.range_rel > floor and l.range_rel > JUMP_RATIO * max(worst, tol):
            return l.module, "jump"
        worst = max(worst, l.range_rel)
    for l in layers:
        if l.range_rel > floor:
            return l.module, "over tolerance"
    return None, None
