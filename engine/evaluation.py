"""Running a model over a labelled set: logits in batches (:func:`predict`) and the
``path -> logits`` evaluator on one engine that an accuracy budget is measured with
(:func:`engine_evaluator`; ``inception-engine quantize --max-drop`` and the study's budget
rows use it)."""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import numpy as np

from .runtime import count_option


def predict(fn: Callable, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits for all of x, in batches."""
    from tqdm import tqdm
    batch = count_option("batch", batch, allow_none=False)
    starts = tqdm(range(0, len(x), batch), desc="evaluating", unit="batch", leave=False,
                  disable=None)            # None: shown on a terminal only
    outs = [np.asarray(fn(x[i:i + batch])) for i in starts]
    return np.concatenate(outs, 0)


def engine_evaluator(backend: str, x: np.ndarray, threads: Optional[int] = None,
                     batch: int = 64, log: Callable[[str], None] = print) -> Optional[Callable]:
    """``path -> logits of x`` on ``backend`` (the engine a Q/DQ file is for), or None when
    that engine is not usable here (the budget is then measured on ONNX Runtime)."""
    from . import backends as B
    from .loader import load
    ok, why = B.check_available(backend)
    if not ok:
        log(f"  {backend} is not usable here ({why}); the budget is measured on ONNX Runtime")
        return None

    def evaluate(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the FP32 reference has no target
            with load(path, backend=backend, threads=threads) as rt:
                return predict(rt, x, batch)
    return evaluate
