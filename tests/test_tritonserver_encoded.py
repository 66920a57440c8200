"""A real Triton Inference Server serving ``serve-export --input encoded``: JPEG/PNG bytes in,
labelled top-k out, equal to ``inception-engine run`` on the same files; a bad image fails only
its own request, also inside a dynamic batch; every kind of bad input gets a clear error and
the server keeps serving.

Only 127.0.0.1 ports are used and every wait is bounded.
"""
from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest

import engine
from engine import datasets, tritonserver
from engine.cli import main
from engine.preprocess import labels_for, topk
from helpers import image_variants, png_bomb, processes_mentioning

if importlib.util.find_spec("pytriton") is None:
    pytest.skip('the server comes from nvidia-pytriton (pip install -e ".[serve]")',
                allow_module_level=True)
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from tritonclient.utils import InferenceServerException  # noqa: E402

SUBJECT = "inception_resnet_v2_fmnist"
NAME = "images"
BATCH = 4                    # the preferred batch: 4 requests sent together run as one
MAX_BYTES = 2 ** 20          # a low cap, so the test's over-size image stays small
TOP = 3
ATOL = 1e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The subject as an encoded-input repository, served on free ports; yields (server,
    onnx file, folder of test images)."""
    root = tmp_path_factory.mktemp("encoded")
    onnx_file = engine.export_onnx(engine.create_model(SUBJECT, weights="bundled"),
                                   root / "subject.onnx")
    repo = root / "repo"
    assert main(["serve-export", str(onnx_file), "--repo", str(repo), "--name", NAME,
                 "--input", "encoded", "--target", "python", "--max-batch", "8",
                 "--preferred", str(BATCH), "--max-queue-delay-us", "300000",
                 "--max-image-bytes", str(MAX_BYTES)]) == 0
    pictures = root / "pictures"
    pictures.mkdir()
    raw, _ = datasets.fashion_mnist("test", limit=3)
    for i, image in enumerate(raw):
        rgb = np.repeat(image[:, :, None], 3, axis=2)
        rgb[:, :, 0] = 255 - rgb[:, :, 0]          # colour, so the channel order matters
        for name, data in image_variants(rgb).items():
            (pictures / f"{i}_{name}").write_bytes(data)
    server = tritonserver.Server(repo, 0, 0, 0)
    try:
        server.start(timeout=180)
        yield server, onnx_file, pictures
    finally:
        server.stop()
        assert processes_mentioning(str(repo)) == []


def _request(data, dtype="UINT8"):
    """One request's input: the bytes ``data`` as UINT8 [1, N], or an array as ``dtype``."""
    arr = np.frombuffer(data, np.uint8)[None] if isinstance(data, bytes) else data
    inp = httpclient.InferInput("image", list(arr.shape), dtype)
    inp.set_data_from_numpy(arr)
    return [inp]


def _top(client, data):
    out = client.infer(NAME, _request(data), outputs=[
        httpclient.InferRequestedOutput("logits", class_count=TOP)]).as_numpy("logits")
    return [entry.decode().split(":") for entry in out[0]]


def _logits(client, data):
    return client.infer(NAME, _request(data)).as_numpy("logits")


def test_outputs_equal_inception_engine_run(served, capsys):
    """Every variant of every picture: the served logits' top-k (classes and probabilities)
    equals ``inception-engine run --json`` on the same file, and the server's labelled
    top-k names the same classes."""
    server, onnx_file, pictures = served
    files = sorted(pictures.iterdir())
    capsys.readouterr()
    assert main(["run", "--engine", str(onnx_file), "--json", "--topk", str(TOP),
                 *map(str, files)]) == 0
    ran = {r["image"]: r["top"] for r in json.loads(capsys.readouterr().out)["results"]}
    client = httpclient.InferenceServerClient(server.url)
    names = labels_for(engine.get_config(SUBJECT))
    for f in files:
        served_top = topk(_logits(client, f.read_bytes()), TOP, names)[0]
        want = ran[str(f)]
        assert [c for c, _, _ in served_top] == [t["class"] for t in want], f.name
        np.testing.assert_allclose([p for _, _, p in served_top], [t["prob"] for t in want],
                                   atol=ATOL, err_msg=f.name)
        labelled = _top(client, f.read_bytes())
        assert [(int(i), label) for _, i, label in labelled] == \
            [(t["class"], t["label"]) for t in want], f.name


def test_modes_and_orientation_come_out_alike(served):
    """The server's answers for one picture: RGBA and the EXIF-rotated PNG equal the RGB PNG;
    grayscale equals its luma sent as RGB."""
    server, _, pictures = served
    client = httpclient.InferenceServerClient(server.url)
    out = {k: _logits(client, (pictures / f"0_{k}").read_bytes())
           for k in ("rgb.png", "rgba.png", "rotated.png", "gray.png", "gray_as_rgb.png")}
    np.testing.assert_array_equal(out["rgba.png"], out["rgb.png"])
    np.testing.assert_array_equal(out["rotated.png"], out["rgb.png"])
    np.testing.assert_array_equal(out["gray.png"], out["gray_as_rgb.png"])


def _batch_counts(client) -> dict:
    stats = client.get_inference_statistics(NAME)["model_stats"][0]["batch_stats"]
    return {int(s["batch_size"]): int(s["compute_infer"]["count"]) for s in stats}


def test_bad_image_fails_alone_in_its_batch(served):
    """Three good images and a corrupt one sent together run as one dynamic batch of four
    (the server's statistics say so); the three get the answers they get alone, the corrupt
    one gets its own error."""
    server, _, pictures = served
    good = [(pictures / f"{i}_rgb.png").read_bytes() for i in range(3)]
    corrupt = good[0][:len(good[0]) // 2]
    client = httpclient.InferenceServerClient(server.url, concurrency=BATCH)
    alone = [_logits(client, g) for g in good]
    before = _batch_counts(client)
    pending = [client.async_infer(NAME, _request(d)) for d in [good[0], corrupt, *good[1:]]]
    results = []
    for p in pending:
        try:
            results.append(p.get_result(timeout=60).as_numpy("logits"))
        except InferenceServerException as e:
            results.append(e)
    assert isinstance(results[1], InferenceServerException)
    assert results[1].status() == "400"
    assert "corrupt or truncated PNG image" in results[1].message()
    for got, want in zip([results[0], *results[2:]], alone):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    deadline = time.monotonic() + 15
    while True:     # an execution's statistics are recorded after its responses are sent
        after = _batch_counts(client)
        grown = {b: n - before.get(b, 0) for b, n in after.items() if n > before.get(b, 0)}
        if grown or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert grown == {BATCH: 1}, f"executions by batch size: {grown}"


@pytest.mark.parametrize("case, message", [
    ("empty", r"the image is empty \(0 bytes\)"),
    ("not an image", r"not a readable image \(not a JPEG/PNG file\)"),
    ("truncated", "corrupt or truncated PNG image"),
    ("gif", r"not a readable image \(not a JPEG/PNG file\)"),
    ("over the byte cap", f"over the limit of {MAX_BYTES:,} bytes"),
    ("100 megapixels", r"10000x10000 = 100\.0 megapixels, over the limit of 40 megapixels"),
    ("two rows", r"one encoded image per request, shape \[1, N\] \(N bytes\), got \[2, 8\]"),
    ("FP32", "data-type is 'FP32', but model 'images' expects 'UINT8'"),
    ("BYTES", "data-type is 'BYTES', but model 'images' expects 'UINT8'"),
])
def test_bad_input_is_refused_and_server_keeps_serving(served, case, message):
    from PIL import Image
    import io
    server, _, pictures = served
    good = (pictures / "1_rgb.jpg").read_bytes()
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    request = {"empty": lambda: _request(b""),
               "not an image": lambda: _request(b"hello, world"),
               "truncated": lambda: _request((pictures / "1_rgb.png").read_bytes()[:300]),
               "gif": lambda: _request(gif.getvalue()),
               "over the byte cap": lambda: _request(good + b"\0" * MAX_BYTES),
               "100 megapixels": lambda: _request(png_bomb(10_000, 10_000)),
               "two rows": lambda: _request(np.zeros((2, 8), np.uint8)),
               "FP32": lambda: _request(np.zeros((1, 8), np.float32), "FP32"),
               "BYTES": lambda: _request(np.array([[good]], dtype=object), "BYTES")}[case]
    client = httpclient.InferenceServerClient(server.url)
    before = _logits(client, good)
    with pytest.raises(InferenceServerException, match=message) as info:
        client.infer(NAME, request())
    assert info.value.status() == "400"
    np.testing.assert_array_equal(_logits(client, good), before)
