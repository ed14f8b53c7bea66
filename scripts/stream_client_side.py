#!/usr/bin/env python3
"""Ask a Runpod serverless LLM endpoint a question and print the answer.

Works the same against the platform and against the kit's local endpoint
(`make serve`). It needs only `requests`, so it can be copied anywhere.

    python scripts/stream_client_side.py --prompt "What is the capital of France?"
    python scripts/stream_client_side.py --mode runsync --prompt "Hi" --max-tokens 32

Modes:
  stream   /run, then poll /stream and print text as it arrives (default)
  runsync  /runsync, then poll /status if the answer is not ready within --wait
  run      /run, then poll /status

Settings (a flag wins over the environment):
  --endpoint-id  $RUNPOD_ENDPOINT_ID
  --api-key      $RUNPOD_API_KEY (for a local endpoint without one: its dev key)
  --base-url     $RUNPOD_ENDPOINT_BASE_URL, else https://api.runpod.ai/v2

Exit status: 0 when the job COMPLETED; 1 when it FAILED, was CANCELLED or
TIMED_OUT, or on an HTTP error; 2 for a usage error; 130 on Ctrl-C (the job is
cancelled first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import urlsplit

import requests

PLATFORM_BASE_URL = "https://api.runpod.ai/v2"
# This script stays standalone (people copy it to a laptop that has only `requests`),
# so it does not import llmkit; these two mirror llmkit.endpoint.config.DEV_API_KEY and
# llmkit.endpoint.jobs.FINAL, which test_clients.py checks.
LOCAL_DEV_KEY = "local-dev-key"  # what `python -m llmkit.endpoint` uses without a key
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class ClientError(RuntimeError):
    """An HTTP or network failure, with a message that says what to check."""


class EndpointClient:
    """The endpoint API: /run, /runsync, /status, /stream, /cancel, /health."""

    def __init__(self, base_url: str, endpoint_id: str, api_key: str,
                 request_timeout: float = 30.0) -> None:
        self.url = f"{base_url.rstrip('/')}/{endpoint_id}"
        self.request_timeout = request_timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}",
                                     "Content-Type": "application/json"})

    def _call(self, method: str, op: str, body: dict | None = None,
              params: dict | None = None, timeout: float | None = None) -> dict:
        url = f"{self.url}/{op}"
        try:
            reply = self.session.request(method, url, json=body, params=params,
                                         timeout=timeout or self.request_timeout)
        except requests.ConnectionError:
            raise ClientError(f"cannot reach {url}: is the endpoint running, and the base "
                              "URL right?") from None
        except requests.Timeout:
            raise ClientError(f"{method} {url} timed out") from None
        if reply.status_code >= 400:
            try:
                detail = reply.json().get("error") or reply.text
            except ValueError:
                detail = reply.text
            hint = {401: " (check --api-key / RUNPOD_API_KEY)",
                    404: " (check --endpoint-id and --base-url)"}.get(reply.status_code, "")
            raise ClientError(f"{method} {op}: HTTP {reply.status_code}: "
                              f"{str(detail)[:500]}{hint}")
        return reply.json()

    def run(self, request: dict) -> dict:
        return self._call("POST", "run", request)

    def runsync(self, request: dict, wait_ms: int) -> dict:
        return self._call("POST", "runsync", request, params={"wait": wait_ms},
                          timeout=wait_ms / 1000 + self.request_timeout)

    def status(self, job_id: str) -> dict:
        return self._call("GET", f"status/{job_id}")

    def stream(self, job_id: str) -> dict:
        return self._call("GET", f"stream/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"cancel/{job_id}")

    def health(self) -> dict:
        return self._call("GET", "health")


# What the kit's handler adds to an answer's last chunk; report() prints it on stderr.
FINAL_FIELDS = ("usage", "finish_reason", "stop_reason")


def chunk_text(chunk) -> str:
    """What to print for one chunk: its "text" (the kit's handler yields {"text": ...}),
    then any fields a handler yields beside it, as JSON on a line of their own."""
    if isinstance(chunk, str):
        return chunk
    if not isinstance(chunk, dict):
        return json.dumps(chunk)
    text = chunk.get("text") if isinstance(chunk.get("text"), str) else ""
    extra = {k: v for k, v in chunk.items() if k != "text" and k not in FINAL_FIELDS}
    return text + (f"\n{json.dumps(extra)}" if extra else "")


def usage_line(output) -> str:
    """"7 prompt + 32 answer tokens, finish_reason length" from the chunk that has them."""
    chunks = output if isinstance(output, list) else [output]
    for chunk in reversed(chunks):
        if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
            line = (f"{usage.get('prompt_tokens')} prompt + "
                    f"{usage.get('completion_tokens')} answer tokens")
            if chunk.get("finish_reason"):
                line += f", finish_reason {chunk['finish_reason']}"
                if chunk.get("stop_reason") is not None:
                    line += f" ({json.dumps(chunk['stop_reason'])})"
            return line
    return ""


def output_text(output) -> str:
    """The text of a final output: a list of chunks (aggregate stream) or one chunk."""
    if isinstance(output, list):
        return "".join(chunk_text(chunk) for chunk in output)
    return "" if output is None else chunk_text(output)


def poll_status(client: EndpointClient, job_id: str, deadline: float,
                interval: float) -> dict:
    """Poll /status until the job is final (any of the four final states)."""
    while True:
        state = client.status(job_id)
        if state["status"] in FINAL:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(job_id)
        time.sleep(interval)


def stream_job(client: EndpointClient, job_id: str, deadline: float, interval: float,
               out=sys.stdout) -> tuple[dict, int]:
    """Poll /stream, writing text as it arrives; returns (final /status, chunk count)."""
    chunks = 0
    while True:
        started = time.monotonic()
        part = client.stream(job_id)
        for item in part.get("stream", []):
            out.write(chunk_text(item.get("output")))
            out.flush()
            chunks += 1
        if part["status"] in FINAL:
            # /stream has no timings or output; /status has them.
            return client.status(job_id), chunks
        if time.monotonic() > deadline:
            raise TimeoutError(job_id)
        if not part.get("stream") and time.monotonic() - started < interval:
            time.sleep(interval)  # the platform answers at once: do not hammer it


def build_request(args: argparse.Namespace) -> dict:
    if args.input:
        try:
            job_input = json.loads(args.input)
        except ValueError as err:
            raise SystemExit(f"error: --input is not valid JSON: {err}") from None
    else:
        job_input = {"sampling_params": {"max_tokens": args.max_tokens,
                                         "temperature": args.temperature}}
        if args.raw:
            job_input["prompt"] = args.prompt
        else:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            job_input["messages"] = messages + [{"role": "user", "content": args.prompt}]
    if isinstance(job_input, dict) and "answerType" not in job_input:
        job_input["answerType"] = "stream" if args.mode == "stream" else "normal"
    request = {"input": job_input}
    if args.execution_timeout:
        request["policy"] = {"executionTimeout": args.execution_timeout}
    return request


def report(state: dict, started: float, chunks: int | None, err=sys.stderr) -> int:
    status, job_id = state["status"], state.get("id", "?")
    timing = (f"{time.monotonic() - started:.1f} s; queue {state.get('delayTime', 0) / 1000:.1f}"
              f" s, run {state.get('executionTime', 0) / 1000:.1f} s")
    if chunks is not None:
        timing += f", {chunks} chunks"
    usage = usage_line(state.get("output"))
    if usage:
        timing += f"; {usage}"
    if status == "COMPLETED":
        print(f"[job {job_id} COMPLETED in {timing}]", file=err)
        return 0
    detail = state.get("error") or {"CANCELLED": "the job was cancelled"}.get(status, "")
    print(f"[job {job_id} {status} after {timing}]" + (f": {detail}" if detail else ""),
          file=err)
    return 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-id", default=os.environ.get("RUNPOD_ENDPOINT_ID"))
    parser.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY"))
    parser.add_argument("--base-url",
                        default=os.environ.get("RUNPOD_ENDPOINT_BASE_URL", PLATFORM_BASE_URL))
    parser.add_argument("--mode", choices=("stream", "runsync", "run"), default="stream")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--system", default=None, help="a system message")
    parser.add_argument("--raw", action="store_true",
                        help="send --prompt as input.prompt (no chat template)")
    parser.add_argument("--input", default=None, help="the whole job input as JSON")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--execution-timeout", type=int, default=None, metavar="MS",
                        help="policy.executionTimeout of the job, in milliseconds")
    parser.add_argument("--wait", type=int, default=90000, metavar="MS",
                        help="how long /runsync waits before the client polls (ms)")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="give up (and cancel the job) after this long")
    parser.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS")
    args = parser.parse_args(argv)
    if not args.endpoint_id:
        parser.error("set --endpoint-id or RUNPOD_ENDPOINT_ID")
    if not args.api_key:
        host = urlsplit(args.base_url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            parser.error("set --api-key or RUNPOD_API_KEY")
        args.api_key = LOCAL_DEV_KEY
    return args


def main(argv: list[str] | None = None, out=sys.stdout, err=sys.stderr) -> int:
    args = parse_args(argv)
    client = EndpointClient(args.base_url, args.endpoint_id, args.api_key)
    request = build_request(args)
    started = time.monotonic()
    deadline = started + args.timeout
    job_id = None
    try:
        if args.mode == "runsync":
            state = client.runsync(request, args.wait)
            job_id = state["id"]
            if state["status"] not in FINAL:
                state = poll_status(client, job_id, deadline, args.poll_interval)
            text = output_text(state.get("output"))
            if text:
                out.write(text + "\n")
            return report(state, started, None, err)
        job_id = client.run(request)["id"]
        print(f"[job {job_id} submitted to {client.url}]", file=err)
        if args.mode == "run":
            state = poll_status(client, job_id, deadline, args.poll_interval)
            text = output_text(state.get("output"))
            if text:
                out.write(text + "\n")
            return report(state, started, None, err)
        state, chunks = stream_job(client, job_id, deadline, args.poll_interval, out)
        out.write("\n")
        return report(state, started, chunks, err)
    except ClientError as error:
        print(f"error: {error}", file=err)
        return 1
    except TimeoutError:
        print(f"error: no final answer after {args.timeout:.0f} s; cancelling job {job_id}",
              file=err)
        _cancel_quietly(client, job_id)
        return 1
    except KeyboardInterrupt:
        if job_id:
            print(f"\ninterrupted: cancelling job {job_id}", file=err)
            _cancel_quietly(client, job_id)
        return 130


def _cancel_quietly(client: EndpointClient, job_id: str | None) -> None:
    if job_id:
        try:
            client.cancel(job_id)
        except ClientError as error:
            print(f"error: could not cancel {job_id}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
