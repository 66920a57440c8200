"""What the repository tracks: sources, data and results, never a build artifact."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT_SUFFIXES = (".whl", ".so", ".pyc", ".pyo", ".egg")


def is_build_artifact(path: str) -> bool:
    """A wheel, a compiled extension or bytecode, or anything under ``__pycache__``,
    ``*.egg-info`` or a ``build``/``dist`` folder at the root: made by a build or an install,
    so it goes stale against the sources and belongs in .gitignore."""
    parts = PurePosixPath(path).parts
    if not parts:
        return False
    return (parts[-1].endswith(ARTIFACT_SUFFIXES) or ".so." in parts[-1]
            or "__pycache__" in parts or any(p.endswith(".egg-info") for p in parts)
            or parts[0] in ("build", "dist"))


def test_the_artifact_rule_recognises_artifacts():
    for bad in ("pyflakes-4.1.0-py2.py3-none-any.whl", "kernels/_ext.cpython-311-x86_64-linux-gnu.so",
                "libfoo.so.1", "engine/__pycache__/cli.cpython-311.pyc", "tests/__pycache__/x.txt",
                "inception_infer.egg-info/PKG-INFO", "dist/inception_infer-0.1.0.tar.gz", "build/lib/x.py"):
        assert is_build_artifact(bad), bad
    for good in ("engine/cli.py", "engine/data/inception_v4_fmnist.safetensors", "kernels/tuning/conv.json",
                 "benchmarks/results/kernels.csv", "tests/tensorrt_api.py", "engine/data/fashion_mnist/calib.npz"):
        assert not is_build_artifact(good), good


def test_no_tracked_file_is_a_build_artifact():
    if shutil.which("git") is None:
        pytest.skip("needs git")
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    tracked = [f for f in proc.stdout.split("\0") if f]
    assert "engine/cli.py" in tracked
    bad = [f for f in tracked if is_build_artifact(f)]
    assert not bad, f"build artifacts are tracked (git rm them; .gitignore keeps them out): {bad}"
