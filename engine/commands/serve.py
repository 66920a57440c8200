"""``inception-engine serve``: run the bundled Triton Inference Server on a model repository."""
from __future__ import annotations

import contextlib
import signal
import sys
import time

from . import add_command, at_least

port = at_least(0)


def register(sub):
    p = add_command(sub, "serve", "inception-engine serve models/ --http-port 8000",
                    help="serve a model repository on the Triton Inference Server bundled in "
                         "nvidia-pytriton (127.0.0.1 only)")
    p.add_argument("repo", help="model repository (written by serve-export)")
    p.add_argument("--http-port", type=port, default=8000, help="HTTP port (default 8000; 0 "
                   "picks a free one)")
    p.add_argument("--grpc-port", type=port, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=port, default=8002,
                   help="Prometheus metrics port (default 8002)")
    p.add_argument("--timeout", type=at_least(1.0, float), default=180.0,
                   help="seconds to wait for the server and its models to be ready "
                        "(default 180)")
    p.add_argument("--log", help="server log file (default: a temporary file, quoted on error)")
    p.add_argument("--require-all", action="store_true",
                   help="fail when any model fails to load (default: serve the models that "
                        "load, print the others' errors; fail only when none loads)")
    p.add_argument("--model-control", choices=["none", "explicit"], default="none",
                   help="explicit: models may also be loaded, reloaded and unloaded through "
                        "the repository API (POST /v2/repository/models/NAME/load)")
    p.set_defaults(func=run)


class _Stop(Exception):
    """SIGTERM, turned into an exception so the server is stopped on the way out."""


def _raise_stop(signum, frame):
    raise _Stop()


def run(args):
    from ..errors import EngineError
    from ..tritonserver import Server
    server = Server(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                    metrics_port=args.metrics_port, log=args.log, require_all=args.require_all,
                    model_control=args.model_control)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        server.start(timeout=args.timeout)
        print(f"Triton Inference Server ready on {args.repo}", flush=True)
        for name, url in server.endpoints.items():
            print(f"  {name:8} {url}", flush=True)
        for m in server.models() or []:
            if m.get("state") == "READY":
                print(f"  model    {m.get('name')} (version {m.get('version')})", flush=True)
        for failed in server.failed:
            print(f"inception-engine: warning: model {failed.split(':', 1)[0]} failed to "
                  f"load, not served: {failed.split(':', 1)[1].strip()}", file=sys.stderr,
                  flush=True)
        print("Ctrl-C stops it.", flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
        raise EngineError(f"the Triton Inference Server exited with status "
                          f"{server.process.returncode}")
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt, _Stop):
            server.stop()
        signal.signal(signal.SIGTERM, previous)
