"""Command line: models table and run on an image (JSON)."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image


def cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=300)


def test_models_table():
    r = cli("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["inception_resnet_v2"]["params"] == 55_843_464
    assert rows["inception_v4"]["input_size"] == [3, 299, 299]


def test_run_json_on_image_says_random(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(p)
    r = cli("run", "--model", "inception_resnet_v2_fmnist", "--json", "--topk", "3", str(p))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["random_weights"] is True and "random" in out["warning"]
    top = out["results"][0]["top"]
    assert len(top) == 3 and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]


def test_unknown_model_exit_code():
    r = cli("run", "--model", "nope", "x.png")
    assert r.returncode == 1 and "valid names" in r.stderr
