"""One runtime, many threads: every CPU engine returns to each caller exactly what a lone
caller gets for the same input.

The subject is the IR-v2 at width 0.25 and 75x75 (the export shared with test_backends). Eight
distinct images; 8 threads x 50 calls each, released together by a barrier, every call on
batch 1 and compared with the single-threaded output for its image.
"""
from __future__ import annotations

import threading
from typing import Callable, List, Tuple

import numpy as np
import pytest

import engine
from engine.backends import is_installed
from engine.errors import InputError

pytest.importorskip("onnx")

SMALL = dict(width=0.25, input_size=(3, 75, 75))
THREADS, CALLS, IMAGES = 8, 50, 8
# every output must equal the lone caller's to this (absolute, logits of order 1)
ATOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """The torch runtime and reference run single-threaded (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def subject(exported_onnx):
    return exported_onnx("inception_resnet_v2", **SMALL)


@pytest.fixture(scope="module")
def images():
    """Noise at eight contrasts: a random-init network's logits barely depend on the noise
    pattern but follow its scale, so these give outputs far apart."""
    rng = np.random.default_rng(11)
    noise = rng.standard_normal((IMAGES, 1, 3, 75, 75)).astype(np.float32)
    return noise * (1 + np.arange(IMAGES, dtype=np.float32)).reshape(IMAGES, 1, 1, 1, 1)


def _open(name, subject):
    """A runtime on the subject for a backend case name (``openvino-throughput`` is OpenVINO
    with ``hint="throughput"``)."""
    path, model = subject
    backend = name.split("-")[0]
    if not is_installed(backend):
        pytest.skip(f"{backend} not installed")
    if backend == "torch":
        from engine.backends.torch import TorchRuntime
        return TorchRuntime(model)
    if name == "openvino-throughput":
        return engine.load(path, backend="openvino", hint="throughput")
    return engine.load(path, backend=backend, threads=1)


def _hammer(call: Callable[[int], object], threads: int = THREADS,
            calls: int = CALLS) -> List[Tuple[int, object]]:
    """Run ``call(image_index)`` ``calls`` times in each of ``threads`` threads started
    together; each thread walks the images from its own offset. Returns (index, result) for
    every call; an exception in any thread is raised here."""
    barrier = threading.Barrier(threads)
    results: List[List[Tuple[int, object]]] = [[] for _ in range(threads)]
    errors: List[BaseException] = []

    def work(k):
        try:
            barrier.wait()
            for j in range(calls):
                i = (k + j) % IMAGES
                results[k].append((i, call(i)))
        except BaseException as e:  # reported by the main thread below
            errors.append(e)
            barrier.abort()

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a caller thread hung"
    if errors:
        raise errors[0]
    return [r for per_thread in results for r in per_thread]


def _assert_distinct(ref):
    """The images give outputs far apart, so a call answered with another caller's output
    cannot pass the comparison."""
    for i in range(len(ref)):
        for j in range(i + 1, len(ref)):
            assert np.abs(ref[i] - ref[j]).max() > 1e3 * ATOL, (i, j)


@pytest.mark.parametrize("name", ["openvino", "openvino-throughput", "onnxruntime", "torch"])
def test_threads_get_what_a_lone_caller_gets(subject, images, name):
    with _open(name, subject) as rt:
        ref = [rt(x) for x in images]
        _assert_distinct(ref)
        got = _hammer(lambda i: rt(images[i]))
    assert len(got) == THREADS * CALLS
    wrong = [i for i, out in got
             if out.shape != ref[i].shape or not np.abs(out - ref[i]).max() <= ATOL]
    assert not wrong, f"{len(wrong)} of {len(got)} calls differ from the lone caller's output"


def test_openvino_throughput_pool_matches_its_streams(subject):
    """Under hint="throughput" the runtime keeps one infer request per stream OpenVINO
    asks for (the calls above then run on different requests at once)."""
    with _open("openvino-throughput", subject) as rt:
        want = int(rt.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        assert rt.num_requests == want >= 1
    with _open("openvino", subject) as rt:
        assert rt.num_requests == int(rt.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


@pytest.mark.parametrize("name, names", [
    ("openvino", ["/repeat/repeat.0/relu/Relu_output_0", "/mixed_5b/Concat_output_0"]),
    ("onnxruntime", ["/repeat/repeat.0/relu/Relu_output_0", "/mixed_5b/Concat_output_0"]),
    ("torch", ["repeat.0", "mixed_5b"]),
])
def test_intermediates_alongside_calls(subject, images, name, names):
    """Intermediates taken while other threads run plain calls are those of the image asked
    for (the second session is built once; torch's hooks see only the capture's forward)."""
    with _open(name, subject) as rt:
        ref_acts = [rt.intermediates(x, names) for x in images[:2]]
        ref = [rt(x) for x in images]

        def call(i):
            if i < 2:
                return "acts", rt.intermediates(images[i], names)
            return "out", rt(images[i])
        got = _hammer(call, threads=4, calls=6)
    for i, (kind, value) in got:
        if kind == "out":
            assert np.abs(value - ref[i]).max() <= ATOL, i
            continue
        assert set(value) == set(names)
        for n in names:
            assert np.abs(value[n] - ref_acts[i][n]).max() <= ATOL, (i, n)


@pytest.mark.parametrize("name", ["openvino", "onnxruntime", "torch", "triton"])
def test_batch_zero_is_refused(subject, name):
    path, _ = subject
    if name == "triton":
        if not is_installed("triton"):
            pytest.skip("triton not installed")
        import warnings
        from engine.backends.triton import InterpreterWarning, TritonRuntime
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InterpreterWarning)
            rt = TritonRuntime(path)
    else:
        rt = _open(name, subject)
    with rt:
        with pytest.raises(InputError, match=r"batch of 0 images.*batch >= 1"):
            rt(np.zeros((0, 3, 75, 75), np.float32))
