"""The study's INT8 files: ours (one per method and target layout, from one statistics
pass), the ``+autoK`` files, the anchors' (third-party quantizers), and the same files of the
architecture at 299 for the full-size latency."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..anchors import ANCHORS
from ..evaldata import default_calib
from .row import SUBJECT


@dataclass
class Int8File:
    """A quantized file of the study: its path, target engine, calibration seconds, layers
    kept float."""

    path: Path
    calib_seconds: float
    excluded: List[str] = field(default_factory=list)
    target: str = "tensorrt"
    note: str = ""


@dataclass
class AnchorFile:
    """A file written by a third-party quantizer (:mod:`engine.anchors`) and the engines it
    is run on."""

    anchor: str
    method: str
    path: Path
    calib_seconds: float
    engines: Sequence[str]
    note: str = ""


def study_targets(cpu_uint8: bool = True) -> List[str]:
    """One target per distinct Q/DQ layout: the signed file every engine runs, and (with
    ``cpu_uint8``) OpenVINO's uint8-after-ReLU file."""
    return ["tensorrt", "openvino"] if cpu_uint8 else ["tensorrt"]


def file_key(method: str, target: str, suffix: str = "") -> str:
    """The study's name of one INT8 file: ``method[+autoK]@target``."""
    return f"{method}{suffix}@{target}"


def quantize_methods(fp32_path, stats, stats_seconds, methods, folder, name, cpu_uint8=True,
                     log: Callable[[str], None] = print, calib_data=None,
                     threads: Optional[int] = None) -> Dict[str, Int8File]:
    """One INT8 file per method and target layout, all from one statistics pass; each file
    gets calibration's defaults, bias correction included where the target wants it for the
    method (it reads ``calib_data`` again)."""
    import calibration
    files: Dict[str, Int8File] = {}
    targets = study_targets(cpu_uint8)
    for m in methods:
        res = calibration.quantize_targets(
            fp32_path, {t: folder / f"{name}.{t}.{m}.onnx" for t in targets},
            data=calib_data, statistics=stats, method=m, threads=threads)
        for t, r in res.items():
            note = "bias-corrected" if r.bias_correction else ""
            files[file_key(m, t)] = Int8File(r.path, stats_seconds + r.seconds, target=t,
                                             note=note)
        log(f"  calibrated {m} in {files[file_key(m, targets[0])].calib_seconds:.1f} s")
    return files


def quantize_auto_excluded(fp32_path, stats, stats_seconds, calib_data, methods, count, folder,
                           name, num_calib, threads, cpu_uint8=True) -> Dict[str, Int8File]:
    """The ``+autoK`` files: the K most sensitive layers kept float."""
    import calibration
    # mse is the most robust range here (entropy clips a spike-shaped histogram hard:
    # see benchmarks/RESULTS.md); auto-exclusion then removes what is left
    method = "mse" if "mse" in methods else methods[0]
    res = calibration.quantize_targets(
        fp32_path, {t: folder / f"{name}.{t}.{method}.auto{count}.onnx"
                    for t in study_targets(cpu_uint8)},
        data=calib_data, statistics=stats, method=method, auto_exclude=count,
        num_images=num_calib, threads=threads)
    return {file_key(method, t, f"+auto{count}"):
            Int8File(r.path, stats_seconds + r.seconds, list(r.auto_excluded), t,
                     note="bias-corrected" if r.bias_correction else "")
            for t, r in res.items()}


def big_model_files(int8: Dict[str, Int8File], folder, threads, arch: str = "inception_resnet_v2",
                    anchors: Optional[Dict[str, AnchorFile]] = None,
                    log: Callable[[str], None] = print):
    """The canonical 299 shape: the subject's architecture at full size with random weights,
    exported FP32 and quantized like each study file (the same layers kept float), and by
    each anchor that wrote one. Returns ``(model, {"fp32", file key or anchor key: path})``."""
    import torch
    import calibration
    from ..export import export_onnx
    from ..models.registry import create_model, get_config
    with torch.random.fork_rng():
        torch.manual_seed(0)        # the same random weights on a rerun, so its trials match
        big_model = create_model(arch)
    big_fp32 = export_onnx(big_model, folder / f"{arch}_299.onnx")
    # speed does not depend on the scale values: calibrate on a few shipped images
    big_calib = torch.nn.functional.interpolate(
        torch.from_numpy(default_calib(get_config(SUBJECT), 8)), size=(299, 299),
        mode="bilinear", align_corners=False).numpy()
    big_stats = calibration.collect_statistics(big_fp32, big_calib, threads=threads)
    files = {"fp32": big_fp32}
    for key, f in int8.items():
        method = key.split("@")[0].split("+")[0]
        files[key] = calibration.quantize(
            big_fp32, folder / f"{arch}_299.{f.target}.{key.split('@')[0]}.onnx",
            statistics=big_stats, method=method, target=f.target, exclude=f.excluded).path
    for key, a in (anchors or {}).items():
        if a.anchor in ANCHORS:     # not NNCF's accuracy control: it needs trained weights
            files[key] = _anchor_quantize(a.anchor, big_fp32, big_calib, folder, threads,
                                          f"{arch}_299.{a.anchor}", log)[0]
    return big_model, files


def _anchor_quantize(name, fp32_path, calib, folder, threads, stem, log):
    """``(path, seconds)`` of anchor ``name`` on ``fp32_path``, or ``(None, None)`` when it
    fails (logged: one quantizer failing must not sink the study)."""
    try:
        return ANCHORS[name].quantize(fp32_path, calib, folder, threads, name=stem)
    except Exception as e:  # noqa: BLE001 - a third-party tool's failure, recorded
        log(f"  anchor {name} failed on {Path(fp32_path).name}: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}")
        return None, None


def anchor_files(names: Sequence[str], fp32_path, calib: np.ndarray, folder, name: str,
                 threads: int, log: Callable[[str], None] = print) -> Dict[str, AnchorFile]:
    """One file per anchor (:mod:`engine.anchors`) from the study's calibration images."""
    files = {}
    for anchor in names:
        path, seconds = _anchor_quantize(anchor, fp32_path, calib, folder, threads,
                                         f"{name}.{anchor}", log)
        if path is not None:
            a = ANCHORS[anchor]
            files[f"anchor:{anchor}"] = AnchorFile(anchor, a.method, Path(path), seconds,
                                                   a.engines)
            log(f"  anchor {anchor}: {seconds:.1f} s")
    return files


@dataclass
class Quantized:
    """The study's INT8 files of one FP32 export, all from one statistics pass and one set
    of calibration images."""

    fp32_path: Path
    calib_data: object            # what --calib gave (or the shipped split's array)
    num_calib: int
    folder: Path
    name: str
    threads: int
    cpu_uint8: bool = True
    log: Callable[[str], None] = print
    stats: object = None
    stats_seconds: float = 0.0

    def __post_init__(self):
        import calibration
        t = time.perf_counter()
        self.stats = calibration.collect_statistics(self.fp32_path, self.calib_data,
                                                    num_images=self.num_calib,
                                                    threads=self.threads, progress=False)
        self.stats_seconds = time.perf_counter() - t

    def calib_array(self) -> np.ndarray:
        """The calibration images the statistics saw, as one float32 NCHW array (what the
        anchors are given)."""
        import calibration
        if isinstance(self.calib_data, np.ndarray):
            return self.calib_data[:self.num_calib]
        return np.concatenate(list(calibration.batches(self.calib_data, self.fp32_path,
                                                       limit=self.num_calib)))

    def ours(self, methods, auto_exclude: int = 0) -> Dict[str, Int8File]:
        files = quantize_methods(self.fp32_path, self.stats, self.stats_seconds, methods,
                                 self.folder, self.name, self.cpu_uint8, self.log,
                                 self.calib_data, self.threads)
        if auto_exclude:
            files.update(quantize_auto_excluded(
                self.fp32_path, self.stats, self.stats_seconds, self.calib_data, methods,
                auto_exclude, self.folder, self.name, self.num_calib, self.threads,
                self.cpu_uint8))
        return files

    def anchors(self, names) -> Dict[str, AnchorFile]:
        if not names:
            return {}
        return anchor_files(names, self.fp32_path, self.calib_array(), self.folder, self.name,
                            self.threads, self.log)
