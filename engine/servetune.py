"""``serve-tune``: search a served model's batching and instance settings against the real
server, and write the best into its ``config.pbtxt``.

The search (what Triton Model Analyzer does with perf_analyzer, which is not installable
here) runs the bundled server on a scratch copy of the model's repository entry (its files
linked, its ``config.pbtxt`` rewritten per setting), in ``--model-control-mode explicit``, so
each setting is one reload through the repository API rather than a server restart, and the
user's repository is not touched until the end. Each setting is measured at each
concurrency with :mod:`engine.loadgen` (closed loop, bounded in requests and seconds), the
server's own queue and compute times beside the client's latencies.

Swept: instance count, ``max_batch_size`` and the dynamic batcher's
``max_queue_delay_microseconds``. With ``max_batch_size`` 1 a request is a full batch on
arrival, so the delay has nothing to wait for: that size is measured with delay 0 only.
Preferred batch sizes are cleared in the swept settings and tried only when asked for
(``preferred=``): Triton's batcher guide advises leaving them unset for most models (the
batcher then sends the largest batch it has as soon as an instance is free, while a
preferred size makes it hold a smaller batch back), and Model Analyzer's automatic search no
longer sweeps them. The repository's current config is always measured too, as the baseline.

Selection (:func:`select`): among the points that answered every request (and, with a
target, whose p99 latency is within it), the one with the highest throughput; ties go to the
lower p99, then to fewer instances, a smaller max batch and a shorter delay (the cheaper
setting). Throughput grows with concurrency until the server is saturated, so the chosen
point is, in practice, the best setting at the highest concurrency that still meets the
target. When no point qualifies (a target no point meets), nothing is written: :func:`tune`
says why in its result, and the command reports it as an error.

Writing (:func:`write_config`): the old ``config.pbtxt`` is kept beside it as
``config.pbtxt.<UTC time>.bak`` and the new one written atomically. Only the swept fields
change (and warm-up samples larger than the new max batch are dropped, since the server
refuses them); every other field is carried over from the parsed old config.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ArtifactError, EngineError, InputError
from .tritonserver import Server

CONFIG = "config.pbtxt"
DEFAULT_INSTANCES = (1, 2)
DEFAULT_MAX_BATCHES = (1, 4, 8)
DEFAULT_DELAYS_US = (0, 500, 2000)
DEFAULT_CONCURRENCY = (1, 2, 4, 8)


@dataclass(frozen=True)
class Setting:
    """The swept fields of a model config. ``queue_delay_us`` None: no dynamic batcher."""
    instances: int
    max_batch: int
    queue_delay_us: Optional[int]
    preferred: Tuple[int, ...] = field(default=())

    def label(self) -> str:
        delay = "no batcher" if self.queue_delay_us is None else f"delay {self.queue_delay_us} us"
        pref = f", preferred {list(self.preferred)}" if self.preferred else ""
        return f"{self.instances} inst, max batch {self.max_batch}, {delay}{pref}"


def grid(instances: Sequence[int] = DEFAULT_INSTANCES,
         max_batches: Sequence[int] = DEFAULT_MAX_BATCHES,
         delays_us: Sequence[int] = DEFAULT_DELAYS_US,
         preferred: Optional[Sequence[int]] = None) -> List[Setting]:
    """The settings to sweep (see the module docstring for what is left out and why).
    ``preferred``: also try each batching setting with these preferred sizes (those up to its
    max batch)."""
    for what, values, low in (("instances", instances, 1), ("max batch", max_batches, 1),
                              ("queue delay", delays_us, 0), ("preferred", preferred or (), 1)):
        bad = [v for v in values if int(v) < low]
        if bad:
            raise InputError(f"{what} values must be >= {low}, got {bad}")
    if not instances or not max_batches or not delays_us:
        raise InputError("each of instances, max batch and queue delay needs at least one value")
    out: List[Setting] = []
    for n in sorted(set(instances)):
        for mb in sorted(set(max_batches)):
            for delay in (sorted(set(delays_us)) if mb > 1 else [0]):
                out.append(Setting(n, mb, delay))
                pref = tuple(sorted({int(p) for p in preferred or () if int(p) <= mb}))
                if mb > 1 and pref:
                    out.append(Setting(n, mb, delay, pref))
    return out


# --------------------------------------------------------------------------- config files
def _pb():
    """The ModelConfig protobuf module tritonclient ships, and protobuf's text format."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise EngineError(f"serve-tune reads model configs with tritonclient[grpc] ({e}); "
                          'install it with pip install -e ".[serve]"') from None
    return model_config_pb2, text_format


def parse_config(text: str, where: str = CONFIG):
    """A ``config.pbtxt``'s text as a ModelConfig message."""
    pb, text_format = _pb()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as e:
        raise ArtifactError(f"{where}: not a readable model config ({e}); rewrite it with "
                            "inception-engine serve-export") from None


def config_text(config) -> str:
    _, text_format = _pb()
    return text_format.MessageToString(config)


def setting_of(config) -> Setting:
    """The swept fields as ``config`` has them (a config with no instance group, or a group
    without a count, runs one instance per device: counted as 1)."""
    counts = [g.count or 1 for g in config.instance_group]
    batcher = config.HasField("dynamic_batching")
    return Setting(counts[0] if counts else 1, int(config.max_batch_size),
                   int(config.dynamic_batching.max_queue_delay_microseconds) if batcher else None,
                   tuple(config.dynamic_batching.preferred_batch_size) if batcher else ())


def apply_setting(config, setting: Setting):
    """A copy of ``config`` with ``setting``'s fields; every instance group gets its count.
    Warm-up samples larger than the new max batch are dropped (the server refuses them)."""
    new = type(config)()
    new.CopyFrom(config)
    new.max_batch_size = setting.max_batch
    if setting.queue_delay_us is None:
        new.ClearField("dynamic_batching")
    else:
        new.dynamic_batching.max_queue_delay_microseconds = setting.queue_delay_us
        del new.dynamic_batching.preferred_batch_size[:]
        new.dynamic_batching.preferred_batch_size.extend(setting.preferred)
    if not new.instance_group:
        new.instance_group.add()
    for group in new.instance_group:
        group.count = setting.instances
    kept = [w for w in new.model_warmup if w.batch_size <= setting.max_batch]
    del new.model_warmup[:]
    new.model_warmup.extend(kept)
    return new


def input_spec(config) -> List[dict]:
    """The config's inputs as :func:`engine.loadgen.make_inputs` takes them."""
    pb, _ = _pb()
    return [{"name": t.name, "data_type": pb.DataType.Name(t.data_type), "dims": list(t.dims)}
            for t in config.input]


def model_dir(repo, name: str) -> Path:
    """``repo/name``, checked: the repository exists and holds that model."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ArtifactError(f"{repo}: no such model repository; write one with "
                            "inception-engine serve-export MODEL --repo DIR")
    d = repo / name
    if not (d / CONFIG).is_file():
        models = sorted(p.name for p in repo.iterdir() if (p / CONFIG).is_file())
        have = ", ".join(models) if models else "none"
        raise InputError(f"no model {name!r} in {repo} (models there: {have}); pass one of "
                         "them with --model")
    return d


def read_config(mdir: Path):
    path = Path(mdir) / CONFIG
    config = parse_config(path.read_text(), str(path))
    if config.max_batch_size < 1:
        raise InputError(f"{path}: max_batch_size is {config.max_batch_size}, so the server "
                         "does not batch this model and there is nothing to tune; export it "
                         "with a dynamic batch axis (inception-engine serve-export --max-batch)")
    if "input" in config.parameters and config.parameters["input"].string_value == "encoded":
        # the load generator sends the model's float tensor; an encoded model takes image
        # bytes of any length, which it cannot make (and the batching is the same model's)
        raise InputError(f"{path}: this model takes encoded images (serve-export --input "
                         "encoded); serve-tune drives models with a tensor input. Tune a "
                         "--input tensor export of the same model file (serve-export MODEL "
                         "--repo DIR --name NAME --input tensor) and copy its settings")
    return config


def write_config(mdir: Path, text: str, stamp: Optional[str] = None) -> Path:
    """Keep ``mdir/config.pbtxt`` as ``config.pbtxt.<stamp>.bak``, then write ``text`` in its
    place (both atomically); returns the backup's path."""
    from .fileio import atomic_path, atomic_write_text
    path = Path(mdir) / CONFIG
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = path.with_name(f"{CONFIG}.{stamp}.bak")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{CONFIG}.{stamp}-{n}.bak")
        n += 1
    with atomic_path(backup) as tmp:
        shutil.copyfile(path, tmp)
    atomic_write_text(path, text)
    return backup


# --------------------------------------------------------------------------- selection
def _ok(row: dict) -> bool:
    return not row.get("load_error") and row.get("failures", 1) == 0 and \
        row.get("requests", 0) > 0


def select(rows: Sequence[dict], p99_ms: Optional[float] = None) -> Optional[dict]:
    """The chosen point (rule in the module docstring), or None when no point qualifies."""
    ok = [r for r in rows if _ok(r) and (p99_ms is None or r["p99_ms"] <= p99_ms)]
    if not ok:
        return None
    return min(ok, key=lambda r: (-r["throughput_ips"], r["p99_ms"], r["instances"],
                                  r["max_batch"], r["queue_delay_us"] or 0, r["concurrency"]))


def baseline_at(rows: Sequence[dict], concurrency: int) -> Optional[dict]:
    """The current config's row at ``concurrency``."""
    return next((r for r in rows if r["current"] and r["concurrency"] == concurrency), None)


# --------------------------------------------------------------------------- the sweep
class _ExplicitServer(Server):
    """The bundled server with explicit model control: ``model`` is loaded at start, and
    reloaded (after its config is rewritten) through the repository API."""

    def __init__(self, repo, model: str, log=None):
        super().__init__(repo, 0, 0, 0, log=log)
        self.model = model

    def command(self, backend_dir: Path) -> List[str]:
        return super().command(backend_dir) + ["--model-control-mode", "explicit",
                                               "--load-model", self.model]


def _scratch_entry(mdir: Path, dest: Path) -> Path:
    """``dest/<name>``: every entry of ``mdir`` linked, except the config (rewritten per
    setting) and its backups."""
    entry = dest / mdir.name
    entry.mkdir(parents=True)
    for p in mdir.iterdir():
        if not p.name.startswith(CONFIG):
            os.symlink(p.resolve(), entry / p.name)
    return entry


def _served_setting(client, name: str) -> Setting:
    """The setting the server reports it is running (what a reload must have applied)."""
    cfg = client.get_model_config(name)
    batcher = cfg.get("dynamic_batching")
    groups = cfg.get("instance_group") or [{}]
    return Setting(int(groups[0].get("count", 1)), int(cfg.get("max_batch_size", 0)),
                   int(batcher.get("max_queue_delay_microseconds", 0)) if batcher is not None
                   else None,
                   tuple(int(b) for b in (batcher or {}).get("preferred_batch_size", [])))


def _effective(setting: Setting) -> Setting:
    """``setting`` with the preferred sizes that change nothing left out: the max batch
    itself (a full batch is sent anyway), which the server adds where none is given."""
    return Setting(setting.instances, setting.max_batch, setting.queue_delay_us,
                   tuple(b for b in setting.preferred if b != setting.max_batch))


class Sweep:
    """The server on the scratch repository, and the measurement of one point."""

    def __init__(self, mdir: Path, workdir: Path, log=None, timeout: float = 180.0):
        self.name = mdir.name
        self.base = read_config(mdir)
        self.entry = _scratch_entry(mdir, workdir / "repo")
        shutil.copyfile(mdir / CONFIG, self.entry / CONFIG)
        self.server = _ExplicitServer(self.entry.parent, self.name, log=log)
        self.timeout = timeout
        self.inputs = input_spec(self.base)

    def __enter__(self):
        self.server.start(timeout=self.timeout)
        return self

    def __exit__(self, *exc):
        self.server.stop()
        return False

    def load(self, setting: Setting) -> Optional[str]:
        """Rewrite the scratch config for ``setting`` and reload; None when the server runs
        it, else the server's reason (or why it did not answer). A server that has exited
        raises :class:`EngineError` with its log's tail."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        from .fileio import atomic_write_text
        atomic_write_text(self.entry / CONFIG, config_text(apply_setting(self.base, setting)))
        client = httpclient.InferenceServerClient(self.server.url,
                                                  network_timeout=self.timeout,
                                                  connection_timeout=self.timeout)
        try:
            client.load_model(self.name)
            served = _served_setting(client, self.name)
        except InferenceServerException as e:
            return str(e)
        except OSError as e:    # refused, reset or timed out: no answer at all
            dead = self.server.exited()
            if dead:
                raise EngineError(f"reloading {setting.label()}: {dead}") from None
            return f"no answer from the server at {self.server.url} ({e})"
        finally:
            client.close()
        if _effective(served) != _effective(setting):
            return f"the server runs {served.label()} after the reload, not {setting.label()}"
        return None

    def measure(self, concurrency: int, requests: int, seconds: float,
                warmup: int) -> Dict[str, object]:
        """One point: warm-up requests, then the measured ones, with the server's counters
        read around them."""
        from . import loadgen
        data = loadgen.make_inputs(self.inputs)
        if warmup:
            loadgen.drive(self.server.url, self.name, data, concurrency, warmup, seconds)
        metrics = self.server.endpoints["metrics"]
        before = loadgen.scrape(metrics, self.name)
        client = loadgen.drive(self.server.url, self.name, data, concurrency, requests, seconds)
        # an execution's counters are recorded after its responses are sent: wait for them
        sent = client["requests"] + client["failures"]
        deadline = time.monotonic() + 2.0
        while True:
            after = loadgen.scrape(metrics, self.name)
            done = (after["nv_inference_request_success"] + after["nv_inference_request_failure"]
                    - before["nv_inference_request_success"]
                    - before["nv_inference_request_failure"])
            if done >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return {**client, **loadgen.server_side(before, after)}


def _row(setting: Setting, current: bool, concurrency: int, figures: dict) -> dict:
    return {"config": setting.label(), "current": current, "instances": setting.instances,
            "max_batch": setting.max_batch, "queue_delay_us": setting.queue_delay_us,
            "preferred": list(setting.preferred), "concurrency": concurrency, **figures}


@contextlib.contextmanager
def progress_bar(total: int):
    """A progress bar on stderr (tqdm where installed, else one line per point); yields
    ``step(text)``."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, file=sys.stderr, unit="point", dynamic_ncols=True)

        def step(text):
            bar.set_postfix_str(text, refresh=False)
            bar.update(1)
        try:
            yield step
        finally:
            bar.close()
        return
    count = [0]

    def step(text):
        count[0] += 1
        width = 30
        done = width * count[0] // total
        print(f"\r[{'#' * done}{'.' * (width - done)}] {count[0]}/{total} {text}",
              end="" if count[0] < total else "\n", file=sys.stderr, flush=True)
    yield step


def sweep_order(current: Setting, settings: Sequence[Setting]) -> List[Tuple[Setting, bool]]:
    """``(setting, is_current)`` in the order :func:`sweep` measures them: the current config
    first, then each setting that differs from it."""
    return [(current, True)] + [(s, False) for s in settings if s != current]


def sweep(mdir: Path, settings: Sequence[Setting], concurrencies: Sequence[int],
          requests: int, seconds: float, warmup: Optional[int] = None, log=None,
          timeout: float = 180.0, step: Callable[[str], None] = lambda text: None,
          confirm: int = 0, p99_ms: Optional[float] = None) -> dict:
    """Measure the current config and every setting at every concurrency; returns
    ``{"rows": [...], "base": ModelConfig, "confirm": [...]}``. ``warmup``: unmeasured
    requests before each point (default: two per client). ``confirm``: rounds of the
    current config and the one :func:`select` chooses (with ``p99_ms``) measured again,
    alternately, at the chosen point's concurrency (a paired check of the sweep's ratio on a
    machine whose load drifts)."""
    for what, values in (("concurrency", concurrencies), ("requests", [requests])):
        if not values or any(int(v) < 1 for v in values):
            raise InputError(f"{what} must be >= 1, got {list(values)}")
    if not seconds > 0:
        raise InputError(f"seconds per point must be > 0, got {seconds}")
    rows: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="inception-serve-tune-") as tmp, \
            Sweep(Path(mdir), Path(tmp), log=log, timeout=timeout) as run:
        current = setting_of(run.base)
        for setting, is_current in sweep_order(current, settings):
            error = None if is_current else run.load(setting)
            for c in concurrencies:
                if error:
                    rows.append(_row(setting, is_current, c, {"load_error": error}))
                    step(f"{setting.label()}: load failed")
                    continue
                figures = run.measure(c, requests, seconds, 2 * c if warmup is None else warmup)
                rows.append(_row(setting, is_current, c, figures))
                step(f"{setting.label()} @ {c}: {figures['throughput_ips']:.0f} img/s")
        checks = _confirm(run, select(rows, p99_ms), current, confirm, requests, seconds,
                          warmup) if confirm else []
    return {"rows": rows, "base": run.base, "confirm": checks}


def _confirm(run: Sweep, best: Optional[dict], current: Setting, rounds: int, requests: int,
             seconds: float, warmup: Optional[int]) -> List[dict]:
    if best is None or best["current"]:
        return []
    chosen = Setting(best["instances"], best["max_batch"], best["queue_delay_us"],
                     tuple(best["preferred"]))
    c = best["concurrency"]
    out = []
    for _ in range(rounds):
        pair = {}
        for key, setting in (("current", current), ("chosen", chosen)):
            error = run.load(setting)
            if error:
                raise EngineError(f"reloading {setting.label()} failed: {error}")
            pair[key] = run.measure(c, requests, seconds, 2 * c if warmup is None else warmup)
        out.append({"concurrency": c, **pair})
    return out


# --------------------------------------------------------------------------- reporting
COLUMNS = [("inst", "instances", "{}"), ("max b", "max_batch", "{}"),
           ("delay us", "queue_delay_us", "{}"), ("pref", "preferred", "{}"),
           ("conc", "concurrency", "{}"), ("img/s", "throughput_ips", "{:.1f}"),
           ("p50 ms", "p50_ms", "{:.2f}"), ("p90 ms", "p90_ms", "{:.2f}"),
           ("p99 ms", "p99_ms", "{:.2f}"), ("queue ms", "queue_ms", "{:.2f}"),
           ("compute ms", "compute_ms", "{:.2f}"), ("batch", "mean_batch", "{:.2f}"),
           ("fail", "failures", "{}")]


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "queue_delay_us" and value is None:
        return "-"
    if key == "preferred":
        return ",".join(str(b) for b in value) or "-"
    return "" if value is None else fmt.format(value)


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table; the current config's rows are marked ``*``."""
    head = ["cfg"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("load_error"):
            cells = [_cell(r, k, f) for _, k, f in COLUMNS[:5]]
            first = r["load_error"].splitlines()[0][:80]
            cells += [f"load failed: {first}"] + [""] * (len(COLUMNS) - 6)
        else:
            cells = [_cell(r, k, f) for _, k, f in COLUMNS]
        lines.append("| " + ("*" if r["current"] else "") + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(result: dict, out) -> None:
    """The sweep's rows as CSV (``.csv``) or the whole result as JSON (any other name)."""
    from .fileio import atomic_write_text
    out = Path(out)
    if out.suffix == ".csv":
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in result["rows"] for k in r))
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in result["rows"]:
            w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
        atomic_write_text(out, buf.getvalue())
    else:
        atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")


def compare(chosen: dict, base: Optional[dict]) -> Optional[dict]:
    """The chosen point against the current config at the same concurrency, as ratios."""
    if base is None or not _ok(base):
        return None
    return {"concurrency": chosen["concurrency"],
            "throughput_ratio": chosen["throughput_ips"] / base["throughput_ips"],
            "p99_ratio": chosen["p99_ms"] / base["p99_ms"],
            "current_throughput_ips": base["throughput_ips"], "current_p99_ms": base["p99_ms"]}


def per_concurrency(rows: Sequence[dict], p99_ms: Optional[float] = None) -> List[dict]:
    """At each concurrency: the swept setting :func:`select` picks there (within the target),
    beside the current config at that concurrency, as ratios."""
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        best = select([r for r in rows if r["concurrency"] == c and not r["current"]], p99_ms)
        vs = compare(best, baseline_at(rows, c)) if best else None
        out.append({"concurrency": c, "best": best["config"] if best else None,
                    "throughput_ips": best["throughput_ips"] if best else None,
                    "p99_ms": best["p99_ms"] if best else None, **(vs or {})})
    return out


def confirmed(pairs: Sequence[dict]) -> Optional[dict]:
    """The median, over the confirmation rounds, of each round's chosen / current ratios."""
    import statistics
    pairs = [p for p in pairs if _ok(p["current"]) and _ok(p["chosen"])]
    if not pairs:
        return None
    return {"rounds": len(pairs), "concurrency": pairs[0]["concurrency"],
            "throughput_ratio": statistics.median(p["chosen"]["throughput_ips"]
                                                  / p["current"]["throughput_ips"]
                                                  for p in pairs),
            "p99_ratio": statistics.median(p["chosen"]["p99_ms"] / p["current"]["p99_ms"]
                                           for p in pairs)}


def tune(repo, name: str, settings: Sequence[Setting], concurrencies: Sequence[int],
         requests: int, seconds: float, p99_ms: Optional[float] = None,
         dry_run: bool = False, warmup: Optional[int] = None, log=None,
         timeout: float = 180.0, step: Callable[[str], None] = lambda text: None,
         confirm: int = 0) -> dict:
    """Sweep, choose (:func:`select`) and, unless ``dry_run``, write the choice into
    ``repo/name/config.pbtxt`` (the old one kept, :func:`write_config`). Returns the rows,
    the choice, its comparison with the current config and what was written. When no point
    qualifies (none meets the target, or none answered all its requests), nothing is written
    and the result has ``chosen`` None and ``error`` saying why (``serve-tune`` reports it as
    an error after printing the table)."""
    if p99_ms is not None and not p99_ms > 0:
        raise InputError(f"the p99 target must be > 0 ms, got {p99_ms}")
    mdir = model_dir(repo, name)
    old_text = (mdir / CONFIG).read_text()
    done = sweep(mdir, settings, concurrencies, requests, seconds, warmup=warmup, log=log,
                 timeout=timeout, step=step, confirm=confirm, p99_ms=p99_ms)
    rows = done["rows"]
    result = {"model": name, "repo": str(repo), "p99_target_ms": p99_ms, "rows": rows,
              "confirm": done["confirm"], "confirmed": confirmed(done["confirm"]),
              "chosen": None, "versus_current": None,
              "written": None, "backup": None}
    chosen = select(rows, p99_ms)
    if chosen is None:
        result["error"] = _unmet(rows, p99_ms)
        return result
    result["chosen"] = chosen
    result["per_concurrency"] = per_concurrency(rows, p99_ms)
    result["versus_current"] = compare(chosen, baseline_at(rows, chosen["concurrency"]))
    if chosen["current"] or dry_run:
        return result
    if (mdir / CONFIG).read_text() != old_text:
        raise EngineError(f"{mdir / CONFIG} changed while serve-tune ran; nothing written. "
                          "Run serve-tune again on the new config")
    setting = Setting(chosen["instances"], chosen["max_batch"], chosen["queue_delay_us"],
                      tuple(chosen["preferred"]))
    result["backup"] = str(write_config(mdir, config_text(apply_setting(done["base"],
                                                                        setting))))
    result["written"] = str(mdir / CONFIG)
    return result


def _unmet(rows: Sequence[dict], p99_ms: Optional[float]) -> str:
    ok = [r for r in rows if _ok(r)]
    if not ok:
        firsts = [r.get("load_error") or r.get("error") for r in rows]
        why = next((f for f in firsts if f), "no request was answered")
        return f"no point answered all its requests ({why}); nothing written"
    best = min(ok, key=lambda r: r["p99_ms"])
    return (f"no point meets p99 <= {p99_ms:g} ms: the lowest p99 was {best['p99_ms']:.2f} ms "
            f"({best['config']}, concurrency {best['concurrency']}); nothing written. Raise "
            "--p99-ms, or try lower concurrency or other settings")
