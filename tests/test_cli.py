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


def test_debug_shows_the_traceback_of_a_project_error(capsys, tmp_path):
    argv = ["run", "--model", "inception_resnet_v2_fmnist", str(tmp_path / "none.png")]
    assert cli.main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert cli.main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "inception-engine: error: image " in err.splitlines()[-1]


@pytest.mark.parametrize("command", [c.replace("_", "-") for c in cli.COMMANDS])
def test_every_help_ends_with_a_worked_example(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    tail = capsys.readouterr().out.rstrip().splitlines()[-2:]
    assert tail[0] == "example:" and tail[1].startswith(f"  inception-engine {command} ")


@pytest.mark.parametrize("image", ["img.png", "missing.png"])
def test_run_on_another_engine_leaves_no_temporary_file(tmp_path, monkeypatch, capsys, image):
    """The on-the-fly ONNX export is removed after the run, and after a failed one."""
    import tempfile
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(tmp_path / "img.png")
    status = cli.main(["run", "--model", "inception_resnet_v2_fmnist", "--backend",
                       "onnxruntime", "--json", str(tmp_path / image)])
    assert status == (0 if image == "img.png" else 2), capsys.readouterr().err
    assert list(scratch.iterdir()) == []


def test_messages_go_through_logging_quiet_by_default(tmp_path, capsys):
    """Export's random-weights warning is a log record on stderr; the command's own output
    (what it wrote) stays on stdout."""
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--model", "inception_resnet_v2_fmnist", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out}")
    assert "engine.commands.export: WARNING: random weights (seed 0)" in captured.err
    import logging
    assert not logging.getLogger("engine").handlers  # the command's handler is gone afterwards
