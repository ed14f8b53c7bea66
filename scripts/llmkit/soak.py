"""`make soak`: many jobs through the local endpoint to real workers; nothing may be lost.

    python -m llmkit.soak [--jobs 1000] [--concurrency 32] [--workers 2] [--model SPEC]

It starts ``python -m llmkit.endpoint`` with N real workers (vLLM, the exported
handler), then drives it with ``llmkit.load``: C clients, a tenth of the jobs with
bad input, the workers' memory sampled throughout.

At the end it checks: every job reached a final state, good jobs COMPLETED and bad
ones FAILED with the handler's message, no job was handed to a worker twice,
``/health`` counts match what the clients saw, the workers' memory levelled off, and
the endpoint exited cleanly. It prints the figures, and exits non-zero when a check
fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from llmkit import load, models
from llmkit.endpoint.harness import EndpointError, EndpointProcess
from llmkit.paths import REPO_ROOT


def soak(jobs: int = 1000, concurrency: int = 32, workers: int = 2, tokens: int = 8,
         model: str | None = None) -> dict:
    model_dir = models.resolve(model)
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "endpoint.log"
    endpoint = EndpointProcess(workers=workers, concurrency=max(concurrency // workers, 1),
                               model=model_dir, handler=REPO_ROOT / "build" / "handler.py",
                               endpoint_id="soak", log_path=log, env={"MAX_MODEL_LEN": "512"})
    with endpoint:
        endpoint.wait_workers(workers)
        report = load.run_load(endpoint, jobs, concurrency, tokens, progress=True)
    code = endpoint.proc.returncode
    if code != 0:
        report["problems"].append(f"the endpoint exited {code} on SIGTERM")
    report.update(workers=workers, model=str(model_dir), log=str(log))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32, help="client tasks at once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=8, help="tokens each good job generates")
    parser.add_argument("--model", default=None, help="default: $MODEL or the embedded model")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    print(f"soak: {args.jobs} jobs, {args.concurrency} at once, {args.workers} worker(s); "
          "starting workers (about a minute each on a CPU)...", flush=True)
    try:
        report = soak(args.jobs, args.concurrency, args.workers, args.tokens, model=args.model)
    except (EndpointError, models.ModelError) as err:
        print(f"soak: FAIL: {err}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in report.items() if k != "memory_samples"}
    print(json.dumps(shown, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["memory"]["levels_off"] is None:
        print("note: too few memory samples to tell whether memory levels off (run more jobs)")
    for problem in report["problems"]:
        print(f"FAIL: {problem}", file=sys.stderr)
    print("soak:", "PASS" if not report["problems"] else "FAIL")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
