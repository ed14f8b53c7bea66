"""python -m llmkit.endpoint: serve the Runpod endpoint API locally, with workers.

Clients use http://HOST:PORT/v2 as their base URL (RUNPOD_ENDPOINT_BASE_URL for
runpod.Endpoint). With --workers 0 it serves only the queue, for a worker started
elsewhere (see --print-worker-env).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from llmkit import handler_module
from llmkit.endpoint.config import DEV_API_KEY, EndpointConfig
from llmkit.endpoint.server import LocalEndpoint
from llmkit.endpoint.worker_api import worker_env
from llmkit.paths import REPO_ROOT

log = logging.getLogger("llmkit.endpoint")


def _positive(kind):
    def parse(raw: str):
        value = kind(raw)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
        return value
    return parse


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llmkit.endpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_count, default=8000, help="0 picks a free port")
    parser.add_argument("--endpoint-id", default="local")
    parser.add_argument("--api-key", default=None,
                        help=f"clients' key (default: $RUNPOD_API_KEY, else {DEV_API_KEY!r})")
    parser.add_argument("--workers", type=_count, default=1,
                        help="worker processes to run (default 1; 0: queue only)")
    parser.add_argument("--handler", default=str(REPO_ROOT / "build" / "handler.py"))
    parser.add_argument("--model", default=None,
                        help="MODEL for the workers (default: $MODEL, else the embedded model)")
    parser.add_argument("--concurrency", type=_positive(int), default=None,
                        help="CONCURRENCY_MODIFIER for the workers: jobs each runs at once")
    parser.add_argument("--execution-timeout", type=_positive(float), default=600.0,
                        metavar="SECONDS", help="the endpoint's execution timeout (default "
                        "600); a job's policy.executionTimeout overrides it")
    parser.add_argument("--reload", action="store_true",
                        help="the workers watch the handler file and serve each new version "
                        "on their running engine (HANDLER_RELOAD=true; `make serve` sets it)")
    parser.add_argument("--restarts", type=_count, default=3,
                        help="replace a crashed worker this many times (default 3)")
    parser.add_argument("--print-worker-env", nargs="?", const="worker-ext-1",
                        metavar="WORKER_ID", help="print `export` lines for a worker started "
                        "by hand, then exit")
    parser.add_argument("--ready-file", type=Path, default=None, metavar="PATH",
                        help="once listening, write {url, root, endpoint_id, pid, port} "
                        "here as JSON (for programs that start the endpoint)")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request")
    return parser.parse_args(argv)


def _shell_env(env: dict[str, str]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api_key = args.api_key or os.environ.get("RUNPOD_API_KEY") or DEV_API_KEY
    if args.print_worker_env:
        env = worker_env(f"http://{args.host}:{args.port}", args.endpoint_id,
                         args.print_worker_env, api_key)
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
        return 0
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="[endpoint] %(message)s")
    if args.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    worker_vars: dict[str, str] = {}
    handler = Path(args.handler)
    if args.workers:
        problem = handler_module.missing(handler)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return handler_module.MISSING_EXIT
        from llmkit import models  # only needed to start workers

        try:
            worker_vars["MODEL"] = str(models.resolve(args.model))
        except models.ModelError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.concurrency:
            worker_vars["CONCURRENCY_MODIFIER"] = str(args.concurrency)
        if args.reload:
            worker_vars["HANDLER_RELOAD"] = "true"
        if args.workers > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            # On a CPU, the handler binds its engine to every core; several engines on
            # one machine would fight over them. vLLM's own binding shares better.
            worker_vars["VLLM_CPU_OMP_THREADS_BIND"] = "auto"
    config = EndpointConfig(endpoint_id=args.endpoint_id, api_key=api_key,
                            execution_timeout_s=args.execution_timeout)
    return asyncio.run(_serve(args, config, handler, worker_vars))


async def _serve(args, config: EndpointConfig, handler: Path, worker_vars: dict) -> int:
    from llmkit.endpoint.workers import Supervisor

    endpoint = LocalEndpoint(config, access_log=args.verbose)
    try:
        root = await endpoint.start(args.host, args.port)
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror}; "
              "pick another --port", file=sys.stderr)
        return 1
    key_note = ("dev default; set --api-key or RUNPOD_API_KEY" if config.api_key == DEV_API_KEY
                else "from --api-key" if args.api_key else "from $RUNPOD_API_KEY")
    shown_key = config.api_key if config.api_key == DEV_API_KEY else "<hidden>"
    base = f"{root}/v2"
    external = worker_env(root, config.endpoint_id, "worker-ext-1", config.api_key)
    print(f"local endpoint {config.endpoint_id!r} is up\n"
          f"base url: {base}\n"
          f"api key: {shown_key} ({key_note})\n"
          f"try: curl -H 'Authorization: Bearer {shown_key}' {base}/{config.endpoint_id}/health\n"
          f"client: RUNPOD_ENDPOINT_BASE_URL={base} python scripts/stream_client_side.py "
          f"--endpoint-id {config.endpoint_id} --prompt 'Hello'\n"
          f"openai client: OpenAI(base_url=\"{base}/{config.endpoint_id}/openai/v1\", "
          f"api_key=\"{shown_key}\")\n"
          f"worker env: {_shell_env(external)}",
          flush=True)
    supervisor = Supervisor(endpoint.state, root, handler, args.workers, worker_vars,
                            restarts=args.restarts)
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for the workers
            log.warning("killing the workers now")
            supervisor.kill()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    if args.workers:
        log.info("starting %d worker(s) on %s (vLLM takes about a minute on a CPU)",
                 args.workers, worker_vars["MODEL"])
    await supervisor.start()
    if args.ready_file:
        _write_ready_file(args.ready_file, root, config.endpoint_id)
    await stop.wait()
    log.info("shutting down: draining workers")
    await supervisor.stop()
    await endpoint.stop()
    if args.ready_file:
        args.ready_file.unlink(missing_ok=True)
    log.info("stopped")
    return 0


def _write_ready_file(path: Path, root: str, endpoint_id: str) -> None:
    """The machine-readable "I listen": written whole (rename), never half. No key in it:
    whoever starts the endpoint chose the key."""
    ready = {"url": f"{root}/v2", "root": root, "endpoint_id": endpoint_id,
             "pid": os.getpid(), "port": int(root.rsplit(":", 1)[1])}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(ready))
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
