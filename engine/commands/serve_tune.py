"""``inception-engine serve-tune``: search a served model's instances, max batch and queue
delay on the bundled Triton Inference Server, and write the best config into the repository."""
from __future__ import annotations

from . import add_command, at_least, in_range, non_negative_int, positive_int

seconds = in_range(0.0, 3600.0)
milliseconds = in_range(0.0, 1e6)


def register(sub):
    from ..servetune import (DEFAULT_CONCURRENCY, DEFAULT_DELAYS_US, DEFAULT_INSTANCES,
                             DEFAULT_MAX_BATCHES)
    p = add_command(sub, "serve-tune", "inception-engine serve-tune models --model irv2_fmnist "
                    "--p99-ms 25 --out sweep.csv",
                    help="sweep instances, max batch and queue delay of a served model under "
                         "load (127.0.0.1 only) and write the best config")
    p.add_argument("repo", help="model repository (written by serve-export)")
    p.add_argument("--model", required=True, help="the model to tune (its directory name)")
    p.add_argument("--p99-ms", type=milliseconds,
                   help="latency target: the best throughput whose p99 is within it (default: "
                        "the best throughput)")
    p.add_argument("--instances", type=positive_int, nargs="+", default=list(DEFAULT_INSTANCES),
                   metavar="N", help="instance counts to try (default 1 2)")
    p.add_argument("--max-batch", type=positive_int, nargs="+",
                   default=list(DEFAULT_MAX_BATCHES), metavar="N",
                   help="max batch sizes to try (default 1 4 8)")
    p.add_argument("--max-queue-delay-us", type=non_negative_int, nargs="+",
                   default=list(DEFAULT_DELAYS_US), metavar="US",
                   help="dynamic batcher queue delays to try, microseconds (default 0 500 2000)")
    p.add_argument("--preferred", type=positive_int, nargs="+", metavar="N",
                   help="also try each setting with these preferred batch sizes (default: "
                        "none, as Triton's batcher guide advises for most models)")
    p.add_argument("--concurrency", type=positive_int, nargs="+",
                   default=list(DEFAULT_CONCURRENCY), metavar="N",
                   help="clients in flight, each a point (default 1 2 4 8)")
    p.add_argument("--requests", type=positive_int, default=200,
                   help="measured requests per point at most (default 200)")
    p.add_argument("--seconds", type=seconds, default=5.0,
                   help="seconds per point at most (default 5)")
    p.add_argument("--warmup", type=non_negative_int,
                   help="unmeasured requests before each point (default: 2 per client)")
    p.add_argument("--confirm", type=at_least(0), default=0, metavar="ROUNDS",
                   help="measure the current and the chosen config again, alternately, this "
                        "many rounds at the chosen concurrency (default 0)")
    p.add_argument("--dry-run", action="store_true",
                   help="sweep and report only; the repository is not written")
    p.add_argument("--out", help="also write the table: .csv (rows) or .json (everything)")
    p.add_argument("--timeout", type=at_least(1.0, float), default=180.0,
                   help="seconds to wait for the server and for each reload (default 180)")
    p.add_argument("--log", help="server log file (default: a temporary file, quoted on error)")
    p.set_defaults(func=run)


def run(args):
    from ..errors import EngineError
    from ..servetune import format_table, grid, progress_bar, tune, write_table
    settings = grid(args.instances, args.max_batch, args.max_queue_delay_us, args.preferred)
    # a bad name or config fails before the server starts
    total = points(args.repo, args.model, settings, args.concurrency)
    with progress_bar(total) as step:
        result = tune(args.repo, args.model, settings, args.concurrency, args.requests,
                      args.seconds, p99_ms=args.p99_ms, dry_run=args.dry_run,
                      warmup=args.warmup, log=args.log, timeout=args.timeout, step=step,
                      confirm=args.confirm)
    if args.out:
        write_table(result, args.out)
    print(format_table(result["rows"]))
    print("(* the current config; latencies are the client's, queue and compute the server's "
          "mean per request)")
    for c in result.get("per_concurrency", []):
        if c["best"] and "throughput_ratio" in c:
            print(f"best swept @ {c['concurrency']}: {c['best']}: {c['throughput_ips']:.1f} "
                  f"img/s, p99 {c['p99_ms']:.2f} ms; against the current config: throughput "
                  f"x{c['throughput_ratio']:.2f}, p99 x{c['p99_ratio']:.2f}")
    for pair in result["confirm"]:
        print(confirm_line(pair))
    if result["confirmed"]:
        c = result["confirmed"]
        print(f"confirmed over {c['rounds']} alternating rounds (median of chosen / current): "
              f"throughput x{c['throughput_ratio']:.2f}, p99 x{c['p99_ratio']:.2f}")
    if result["chosen"] is None:
        raise EngineError(result["error"])
    chosen, vs = result["chosen"], result["versus_current"]
    print(f"chosen: {chosen['config']} (at concurrency {chosen['concurrency']}: "
          f"{chosen['throughput_ips']:.1f} img/s, p99 {chosen['p99_ms']:.2f} ms)")
    if vs:
        print(f"versus the current config at concurrency {vs['concurrency']}: throughput "
              f"x{vs['throughput_ratio']:.2f}, p99 x{vs['p99_ratio']:.2f}")
    if chosen["current"]:
        print("the current config is the best: nothing written")
    elif result["written"]:
        print(f"wrote {result['written']} (old config kept as {result['backup']})")
    else:
        print("--dry-run: nothing written")
    return 0


def points(repo, model: str, settings, concurrencies) -> int:
    """How many points the sweep measures (the progress bar's total): the model's current
    config and each setting that differs from it, at each concurrency."""
    from ..servetune import model_dir, read_config, setting_of, sweep_order
    current = setting_of(read_config(model_dir(repo, model)))
    return len(sweep_order(current, settings)) * len(concurrencies)


def _figures(point: dict) -> str:
    if point.get("p99_ms") is None:     # nothing answered: no latency to show
        return f"failed ({point.get('error') or 'no request was answered'})"
    failed = f", {point['failures']} failed" if point.get("failures") else ""
    return f"{point['throughput_ips']:.1f} img/s p99 {point['p99_ms']:.2f} ms{failed}"


def confirm_line(pair: dict) -> str:
    """One confirmation round: the current and the chosen config's figures."""
    return (f"confirm @ {pair['concurrency']}: current {_figures(pair['current'])}, chosen "
            f"{_figures(pair['chosen'])}")
