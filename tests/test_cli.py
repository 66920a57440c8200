"""Command line: models table, run on an image (JSON), and how errors reach the user."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine import cli
from engine.errors import ArtifactError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=300)


def test_models_table():
    r = run_cli("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["inception_resnet_v2"]["params"] == 55_843_464
    assert rows["inception_v4"]["input_size"] == [3, 299, 299]


def test_run_json_on_image_says_random(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(p)
    r = run_cli("run", "--model", "inception_resnet_v2_fmnist", "--json", "--topk", "3", str(p))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["random_weights"] is True and "random" in out["warning"]
    top = out["results"][0]["top"]
    assert len(top) == 3 and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]


def test_unknown_model_exit_code():
    r = run_cli("run", "--model", "nope", "x.png")
    assert r.returncode == 2 and "valid names" in r.stderr
    assert r.stderr.startswith("inception-engine: error: ") and "Traceback" not in r.stderr


def test_missing_image_is_a_clean_error(tmp_path):
    r = run_cli("run", "--model", "inception_resnet_v2_fmnist", str(tmp_path / "none.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "none.png does not exist" in r.stderr


@pytest.mark.parametrize("argv, message", [
    (["bench", "m.onnx", "--iters", "0"], "argument --iters: 0 is below the minimum 1"),
    (["bench", "m.onnx", "--duration", "-1"], "argument --duration: -1 is below the minimum 0.0"),
    (["verify", "m.onnx", "--batch", "two"], "argument --batch: 'two' is not an integer"),
])
def test_bad_option_value_is_a_usage_error(capsys, argv, message):
    """Counts are checked by argparse before any work: exit status 2 and the option named."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def _handler(error):
    def handler(args):
        raise error
    return handler


def test_engine_error_is_one_message_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """The package's own errors say what to do: one line on stderr, exit status 2. Any other
    exception is a bug: it propagates, traceback and all."""
    parser = cli.make_parser()
    monkeypatch.setattr(cli, "make_parser", lambda: parser)
    args = parser.parse_args(["models"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)

    args.func = _handler(ArtifactError("m.onnx: the file is empty; export it again"))
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err == "inception-engine: error: m.onnx: the file is empty; export it again\n"

    for bug in (TypeError("unsupported operand"), ValueError("math domain error"),
                FileNotFoundError("/no/such/internal/file")):
        args.func = _handler(bug)
        with pytest.raises(type(bug), match=str(bug)):
            cli.main([])
