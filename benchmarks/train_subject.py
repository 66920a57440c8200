"""Train the INT8 study's test subject: Inception-ResNet-v2 at width 0.25 on Fashion-MNIST.

No pretrained Inception weights can be downloaded here, so the study needs a network whose
accuracy means something. This script trains ``inception_resnet_v2_fmnist`` (the IR-v2
topology at width 0.25, 3.43M parameters, 75x75 input: 28x28 grayscale resized bilinearly and
replicated to 3 channels) from the Debian package ``dataset-fashion-mnist``, and writes

- ``engine/data/inception_resnet_v2_fmnist.safetensors``: the FP32 state dict (what
  ``create_model(..., weights="bundled")`` loads);
- ``engine/data/inception_resnet_v2_fmnist.json``: test accuracy (FP32, eval mode, all 10,000
  test images), the recipe, wall time and machine.

``--prepare-data`` writes the data that ships with the package (``engine/data/fashion_mnist/``:
the test set as published, and a 2,000-image calibration split drawn from the train set).

Reproducible: fixed seed, a data order drawn from a seeded generator, a fixed thread count.
(Bit-exact results also need the same torch build and CPU; the JSON records both.)

Held out: every subject trains on the 55,000 train images outside ``val.npz`` (the
validation split an accuracy budget is chosen on), never on those 5,000; the record names both
index sets and the checkpoint by SHA-256, and gives the subject's top-1 on the held-out split.

Speed: 1.75 epochs of the 55,000 (753 steps of 128) took 8.2 minutes for IR-v2 and 5.3 for
IR-v1 at 1 thread on a 2-vCPU Xeon (AMX) shared with other jobs; on a busy machine 1 thread is
much faster than 2 (threads waiting at barriers for a descheduled peer burn the share), hence
the default. SIGUSR1 stops training after the current step and still evaluates and saves
(recorded in the JSON as steps < steps_planned). Inception-v4 takes two stages (below).

    python benchmarks/train_subject.py --prepare-data
    python benchmarks/train_subject.py --epochs 1.75 --batch-size 128 --lr 2e-3 --threads 1
    python benchmarks/train_subject.py --model inception_resnet_v1_fmnist --epochs 1.75 --lr 2e-3
    python benchmarks/train_subject.py --model inception_v4_fmnist --epochs 6 --lr 3e-3 \
        --out /tmp/v4/inception_v4_fmnist.safetensors
    python benchmarks/train_subject.py --model inception_v4_fmnist --epochs 2 --lr 1e-3 \
        --warmup 0.1 --flip --init /tmp/v4/inception_v4_fmnist.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine import datasets  # noqa: E402
from engine.fileio import atomic_path, atomic_write_text, sha256_file  # noqa: E402
from engine.timing import cpu_model  # noqa: E402

SUBJECTS = ("inception_resnet_v2_fmnist", "inception_v4_fmnist", "inception_resnet_v1_fmnist")
SOURCE = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR = ROOT / "engine" / "data"

README = """\
Fashion-MNIST, as shipped with this package
===========================================

Source: Fashion-MNIST by Zalando Research, https://github.com/zalandoresearch/fashion-mnist
(copied from the Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/).
Copyright 2017 Zalando SE. Licence: MIT (Expat):

  Permission is hereby granted, free of charge, to any person obtaining a copy of this
  software and associated documentation files (the "Software"), to deal in the Software
  without restriction, including without limitation the rights to use, copy, modify, merge,
  publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
  to whom the Software is furnished to do so, subject to the following conditions:

  The above copyright notice and this permission notice shall be included in all copies or
  substantial portions of the Software.

  THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
  INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR
  PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE
  FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
  OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
  DEALINGS IN THE SOFTWARE.

Files
-----
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz
    The 10,000-image test set, unchanged (IDX format, gzip). Used only for evaluation.
calib.npz
    {n} images drawn without replacement from the 60,000-image TRAIN set with
    numpy.random.default_rng({seed}) (sorted indices): "images" uint8 (N, 28, 28),
    "labels" uint8 (N,), "train_index" int32 (N,). For INT8 calibration; no test image.
    Written by `python benchmarks/train_subject.py --prepare-data`.
val.npz
    {val_n} other TRAIN images, drawn without replacement from the train images not in
    calib.npz with numpy.random.default_rng({val_seed}) (sorted indices), same arrays as
    calib.npz. The validation split on which an INT8 accuracy budget (--max-drop) is chosen,
    so the test set only reports the result; disjoint from calib.npz and from the test set.
    The shipped subjects were trained on the other {train_n} train images (calib.npz
    included, val.npz never): each subject's record (engine/data/<model>.json) holds the
    SHA-256 of its training index, of this split's index and of its checkpoint. Written by
    `python benchmarks/train_subject.py --prepare-data` (or --prepare-val alone).
"""


def prepare_data(source: Path, out_dir: Path):
    """Write the shipped data: the test set as published, the calibration split, a README."""
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets.read_source(source, "test")                  # check before copying
    for name in datasets.TEST_FILES:
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(source / name, tmp)
    images, labels = datasets.read_source(source, "train")
    rng = np.random.default_rng(datasets.CALIB_SEED)
    index = np.sort(rng.choice(len(images), size=datasets.CALIB_SIZE, replace=False))
    with atomic_path(out_dir / datasets.CALIB_FILE, suffix=".npz") as tmp:
        np.savez_compressed(tmp, images=images[index], labels=labels[index],
                            train_index=index.astype(np.int32))
    publish(*(out_dir / n for n in (*datasets.TEST_FILES, datasets.CALIB_FILE)))
    print(f"wrote {out_dir}: test set (10000), calib split ({len(index)} train images, "
          f"classes {np.bincount(labels[index], minlength=10).tolist()})")
    prepare_val(source, out_dir)


def prepare_val(source: Path, out_dir: Path):
    """Write the validation split (train images outside calib.npz) and the README."""
    images, labels = datasets.read_source(source, "train")
    with np.load(out_dir / datasets.CALIB_FILE) as z:
        calib_index = z["train_index"]
    index = datasets.validation_index(len(images), calib_index)
    with atomic_path(out_dir / datasets.VAL_FILE, suffix=".npz") as tmp:
        np.savez_compressed(tmp, images=images[index], labels=labels[index], train_index=index)
    atomic_write_text(out_dir / "README.txt",
                      README.format(n=datasets.CALIB_SIZE, seed=datasets.CALIB_SEED,
                                    val_n=datasets.VAL_SIZE, val_seed=datasets.VAL_SEED,
                                    train_n=len(images) - datasets.VAL_SIZE))
    publish(out_dir / datasets.VAL_FILE, out_dir / "README.txt")
    print(f"wrote {out_dir}: validation split ({len(index)} train images, "
          f"classes {np.bincount(labels[index], minlength=10).tolist()})")


def publish(*paths):
    """Make written files world-readable (atomic_path's temporary files are created 0600)."""
    for path in paths:
        os.chmod(path, 0o644)


def index_sha256(index) -> str:
    """SHA-256 of a sorted train index as little-endian int32: names a split by its images."""
    import hashlib
    return hashlib.sha256(np.sort(np.asarray(index)).astype("<i4").tobytes()).hexdigest()


def param_groups(model, weight_decay):
    """No weight decay on BN parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def batches(images, labels, batch_size, generator=None, flip=False):
    """Yield (uint8 images, int64 labels) batches; shuffled and flipped when a generator is given."""
    n = len(images)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x, y = images[idx], labels[idx].long()
        if flip:
            mask = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(mask.view(-1, 1, 1), x.flip(-1), x)
        yield x, y


@torch.no_grad()
def evaluate(model, images, labels, cfg, batch_size=500):
    """Top-1 correct count over uint8 images, eval mode."""
    model.eval()
    correct = 0
    for x, y in batches(images, labels, batch_size):
        inp = datasets.to_model_input(x, cfg).contiguous(memory_format=torch.channels_last)
        correct += int((model(inp).argmax(1) == y).sum())
    return correct


def train(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg = engine.get_config(args.model)

    tr_x, tr_y = (torch.from_numpy(a.copy()) for a in datasets.read_source(args.source, "train"))
    te_x, te_y = (torch.from_numpy(a.copy()) for a in datasets.fashion_mnist("test"))
    # the shipped validation split is held out of training, so the budget's split is unseen
    with np.load(datasets.DATA_DIR / datasets.VAL_FILE) as z:
        val_index = np.asarray(z["train_index"], dtype=np.int64)
    train_index = np.setdiff1d(np.arange(len(tr_x)), val_index)
    va_x, va_y = tr_x[val_index], tr_y[val_index]
    tr_x, tr_y = tr_x[train_index], tr_y[train_index]
    if args.limit:
        tr_x, tr_y = tr_x[:args.limit], tr_y[:args.limit]

    model = engine.create_model(args.model)
    init = None
    if args.init:
        # a second stage: start from a checkpoint (recorded by hash, so the chain of runs
        # that produced the shipped file stays reproducible)
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(args.init)))
        init = {"checkpoint": args.init.name, "sha256": sha256_file(args.init)}
        record = args.init.with_suffix(".json")
        if record.is_file():
            init["record"] = json.loads(record.read_text())
    model = model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    steps_per_epoch = math.ceil(len(tr_x) / args.batch_size)
    total = math.ceil(args.epochs * steps_per_epoch)      # fractional epochs allowed
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total,
                                                pct_start=args.warmup, div_factor=25,
                                                final_div_factor=1e3)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} params; train "
          f"{len(tr_x)} images, {args.epochs} epochs x {steps_per_epoch} steps of "
          f"{args.batch_size}; AdamW lr {args.lr} wd {args.weight_decay}, one-cycle, "
          f"label smoothing {args.label_smoothing}, flip {args.flip}; "
          f"{args.threads} threads", flush=True)

    # SIGUSR1 = stop after the current step, then evaluate and save as usual (a deadline
    # safety valve; the JSON then records the step reached, so the run stays reproducible
    # with --epochs set to steps_done / steps_per_epoch)
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))
    t0 = time.time()
    step = 0
    epoch_log = []
    for epoch in range(math.ceil(args.epochs)):
        model.train()
        seen = correct = 0
        loss_sum = 0.0
        te = time.time()
        for x, y in batches(tr_x, tr_y, args.batch_size, gen, flip=args.flip):
            if step == total or stop:
                break
            inp = datasets.to_model_input(x, cfg).contiguous(memory_format=torch.channels_last)
            logits = model(inp)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step < total:
                sched.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
            if step % args.log_every == 0 or step == total:
                el = time.time() - t0
                print(f"epoch {epoch + 1}/{math.ceil(args.epochs)} step {step}/{total} "
                      f"loss {loss_sum / seen:.4f} train acc {100 * correct / seen:.2f}% "
                      f"lr {sched.get_last_lr()[0]:.2e} {seen / (time.time() - te):.0f} img/s "
                      f"elapsed {el / 60:.1f} min eta {el / step * (total - step) / 60:.1f} min",
                      flush=True)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen,
               "train_acc": 100 * correct / seen, "minutes": (time.time() - te) / 60}
        epoch_log.append(row)
        if stop:
            print(f"SIGUSR1: stopped at step {step} of {total}", flush=True)
            break
    train_s = time.time() - t0

    te_correct = evaluate(model, te_x, te_y, cfg)
    va_correct = evaluate(model, va_x, va_y, cfg)
    acc = 100 * te_correct / len(te_x)
    print(f"test top-1 (FP32, eval, {len(te_x)} images): {acc:.2f}% ({te_correct} correct); "
          f"held-out validation {100 * va_correct / len(va_x):.2f}%; "
          f"training {train_s / 60:.1f} min", flush=True)

    from safetensors.torch import save_file
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.contiguous() for k, v in model.state_dict().items()
                  if not v.is_floating_point()})      # BN num_batches_tracked (int64)
    out = Path(args.out or DATA_DIR / f"{args.model}.safetensors")
    with atomic_path(out, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"model": args.model, "dataset": "fashion_mnist",
                                             "test_top1": f"{acc:.2f}"})
    report = {
        "model": args.model, "checkpoint": out.name, "sha256": sha256_file(out),
        "dataset": (f"Fashion-MNIST (train: the {len(train_index)} train images of "
                    f"dataset-fashion-mnist outside val.npz; test: the shipped 10k)"),
        "test_top1": round(acc, 2), "test_correct": te_correct, "test_images": len(te_x),
        "val_top1": round(100 * va_correct / len(va_x), 2), "val_correct": va_correct,
        "val_images": len(va_x),
        "train_index_sha256": index_sha256(train_index[:args.limit or None]),
        "val_index_sha256": index_sha256(val_index),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
        "flip": args.flip, "seed": args.seed, "threads": args.threads,
        "train_images": len(tr_x), "optimizer": "AdamW, OneCycleLR",
        "steps": step, "steps_planned": total, "steps_per_epoch": steps_per_epoch,
        "train_wall_s": round(train_s, 1), "epoch_log": epoch_log, "init": init,
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": f"{platform.machine()} {cpu_model()}, {os.cpu_count()} CPUs (shared)",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    publish(out, out.with_suffix(".json"))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json').name}")
    return acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepare-data", action="store_true",
                   help="write engine/data/fashion_mnist/ (test set, calib split) and exit")
    p.add_argument("--prepare-val", action="store_true",
                   help="write only the validation split engine/data/fashion_mnist/val.npz")
    p.add_argument("--source", type=Path, default=SOURCE,
                   help="folder of the original IDX .gz files (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=1.75,
                   help="passes over the train set; fractional values stop mid-epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--warmup", type=float, default=0.15, help="fraction of steps warming up")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads; 1 is fastest on a busy machine (no spinning at barriers)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--model", choices=SUBJECTS, default=SUBJECTS[0],
                   help="which subject to train (all share the recipe)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this checkpoint (a fine-tuning stage; its hash and record "
                        "are kept in the new record)")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint path (default: engine/data/<model>.safetensors)")
    args = p.parse_args(argv)
    if args.prepare_data:
        prepare_data(args.source, datasets.DATA_DIR)
        return 0
    if args.prepare_val:
        prepare_val(args.source, datasets.DATA_DIR)
        return 0
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
