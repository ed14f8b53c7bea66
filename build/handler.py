# =============================================================================
# GENERATED FILE - DO NOT EDIT. Edit the notebook and run `make export-handler`.
# Source notebook: notebooks/handler_dev.ipynb
# Source cells (in order): imports, settings, engine, validation, handler
# `make check-handler` fails when this file is out of date with the notebook.
# =============================================================================


# %% cell 4 (id imports)
import os
import uuid

from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind


# %% cell 5 (id settings)
# Engine settings come from environment variables named after vLLM's flags, as in
# Runpod's official vLLM worker. A bad value stops start-up with a clear message.
ON_CPU = current_platform.is_cpu()


def _env(name, parse, default, check=None, expected=""):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not valid: expected {expected}") from None
    if check is not None and not check(value):
        raise SystemExit(f"{name}={raw!r} is not valid: expected {expected}")
    return value


def _bool(raw):
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


MODEL = os.environ.get("MODEL", "").strip()
MAX_MODEL_LEN = _env("MAX_MODEL_LEN", int, None, lambda v: v >= 16, "an integer >= 16")
CONCURRENCY_MODIFIER = _env("CONCURRENCY_MODIFIER", int, 1, lambda v: 1 <= v <= 1024,
                            "an integer from 1 to 1024")
DEFAULT_MAX_TOKENS = _env("DEFAULT_MAX_TOKENS", int, 512, lambda v: v >= 1, "an integer >= 1")
# Stream mode: a job's first text goes out at once; then chunks are at least
# STREAM_INTERVAL_MS apart, the gap doubling per chunk up to STREAM_INTERVAL_MAX_MS. Short
# answers stream smoothly and a long one makes at most 2 HTTP posts a second: each post
# costs CPU that, on a small machine, the engine misses. 0: one chunk per engine step.
STREAM_INTERVAL_MS = _env("STREAM_INTERVAL_MS", int, 100, lambda v: 0 <= v <= 60_000,
                          "an integer from 0 to 60000")
STREAM_INTERVAL_MAX_MS = _env("STREAM_INTERVAL_MAX_MS", int, max(500, STREAM_INTERVAL_MS),
                              lambda v: STREAM_INTERVAL_MS <= v <= 60_000,
                              f"an integer from STREAM_INTERVAL_MS ({STREAM_INTERVAL_MS}) "
                              "to 60000")
ENGINE_ARGS = dict(
    model=MODEL,
    max_model_len=MAX_MODEL_LEN,
    # float32 batches 4x faster than bfloat16 on a CPU without native bf16.
    dtype=_env("DTYPE", str, "float32" if ON_CPU else "auto", None, "a dtype"),
    # On the CPU, graph capture costs minutes at start-up and gains little.
    enforce_eager=_env("ENFORCE_EAGER", _bool, ON_CPU, None, "true or false"),
    # On the CPU this is the share of host memory vLLM reserves; the default 0.92 fails.
    gpu_memory_utilization=_env("GPU_MEMORY_UTILIZATION", float, 0.3 if ON_CPU else 0.90,
                                lambda v: 0 < v <= 1, "a number in (0, 1]"),
    max_num_seqs=_env("MAX_NUM_SEQS", int, None, lambda v: v >= 1, "an integer >= 1"),
    tensor_parallel_size=_env("TENSOR_PARALLEL_SIZE", int, 1, lambda v: v >= 1,
                              "an integer >= 1"),
    quantization=_env("QUANTIZATION", str, None, None, "a quantization method"),
    enable_prefix_caching=_env("ENABLE_PREFIX_CACHING", _bool, None, None, "true or false"),
    trust_remote_code=_env("TRUST_REMOTE_CODE", _bool, False, None, "true or false"),
)
if ON_CPU:
    # vLLM's engine processes read these at start. KV cache size in GiB; and OpenMP on
    # every core this process may use, which decodes about 1.5x faster than vLLM's
    # "auto" (one core kept for its scheduler). Engines sharing a machine want "auto".
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    _cores = (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
              else range(os.cpu_count() or 1))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(_cores))))


# %% cell 6 (id engine)
_engine = None


def load_engine():
    """Start vLLM once per process: under __main__ or on the first job, never at import."""
    global _engine
    if _engine is None:
        if not MODEL:
            raise SystemExit("MODEL is not set: point it at a model folder or a baked model")
        args = {k: v for k, v in ENGINE_ARGS.items() if v is not None}
        _engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**args))
    return _engine


# %% cell 7 (id validation)
class InputError(ValueError):
    """Bad job input; the message names the field and what was expected."""


ANSWER_TYPES = ("stream", "normal")
INPUT_FIELDS = ("prompt", "messages", "answerType", "sampling_params")
ROLES = ("system", "user", "assistant")
_NUM = (int, float)
# name: (accepted types, check, what was expected)
SAMPLING_FIELDS = {
    "max_tokens": (int, lambda v: v >= 1, "an integer >= 1"),
    "min_tokens": (int, lambda v: v >= 0, "an integer >= 0"),
    "temperature": (_NUM, lambda v: 0 <= v <= 10, "a number from 0 to 10"),
    "top_p": (_NUM, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (int, lambda v: v == -1 or v >= 0, "-1 (off) or an integer >= 0"),
    "min_p": (_NUM, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "presence_penalty": (_NUM, lambda v: -2 <= v <= 2, "a number from -2 to 2"),
    "frequency_penalty": (_NUM, lambda v: -2 <= v <= 2, "a number from -2 to 2"),
    "repetition_penalty": (_NUM, lambda v: 0 < v <= 2, "a number in (0, 2]"),
    "seed": (int, lambda v: 0 <= v < 2**63, "an integer >= 0"),
    "stop": ((str, list), lambda v: _is_stop(v), "a string or a list of up to 16 strings"),
}


def _is_stop(value):
    if isinstance(value, str):
        return 0 < len(value) <= 1000
    return len(value) <= 16 and all(isinstance(s, str) and 0 < len(s) <= 1000 for s in value)


def _type_name(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_text(field, value):
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string, got {_type_name(value)}")
    if not value.strip():
        raise InputError(f"{field} must not be empty")
    if "\x00" in value:
        raise InputError(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{field} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def parse_input(raw):
    """Validate a job's input; return (prompt or messages, stream?, sampling dict)."""
    if not isinstance(raw, dict):
        raise InputError(f"input must be a JSON object, got {_type_name(raw)}")
    unknown = sorted(set(raw) - set(INPUT_FIELDS))
    if unknown:
        raise InputError(f"unknown field input.{unknown[0]}; expected some of {', '.join(INPUT_FIELDS)}")
    if ("prompt" in raw) == ("messages" in raw):
        raise InputError("input needs exactly one of input.prompt (a string) or input.messages")
    if "prompt" in raw:
        source = _check_text("input.prompt", raw["prompt"])
    else:
        messages = raw["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError("input.messages must be a non-empty array of {role, content} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise InputError(f"input.messages[{i}] must be an object with exactly role and content")
            if m["role"] not in ROLES:
                raise InputError(f"input.messages[{i}].role must be one of {', '.join(ROLES)}")
            _check_text(f"input.messages[{i}].content", m["content"])
        source = messages
    answer_type = raw.get("answerType", "normal")
    if answer_type not in ANSWER_TYPES:
        raise InputError(f"input.answerType must be 'stream' or 'normal', got {answer_type!r:.40}")
    sampling = raw.get("sampling_params", {})
    if not isinstance(sampling, dict):
        raise InputError(f"input.sampling_params must be an object, got {_type_name(sampling)}")
    for name, value in sampling.items():
        if name not in SAMPLING_FIELDS:
            raise InputError(f"unknown field input.sampling_params.{name:.40}; expected some of "
                             + ", ".join(SAMPLING_FIELDS))
        types, check, expected = SAMPLING_FIELDS[name]
        # bool is an int in Python, but true is no token count.
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            raise InputError(f"input.sampling_params.{name} must be {expected}, got {value!r:.40}")
    return source, answer_type == "stream", dict(sampling)


def tokenize(engine, source):
    """Token ids for a prompt or chat messages; checks them against MAX_MODEL_LEN."""
    limit = engine.model_config.max_model_len
    field = "input.prompt" if isinstance(source, str) else "input.messages"
    chars = len(source) if isinstance(source, str) else sum(len(m["content"]) for m in source)
    if chars > 64 * limit:  # far too long: refuse before spending time tokenizing it
        raise InputError(f"{field} is {chars} characters, far over MAX_MODEL_LEN={limit} tokens")
    tokenizer = engine.get_tokenizer()
    if isinstance(source, str):
        ids = tokenizer.encode(source)
    else:
        text = tokenizer.apply_chat_template(source, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) >= limit:
        raise InputError(f"{field} is {len(ids)} tokens; MAX_MODEL_LEN={limit} leaves no room to answer")
    return ids


def sampling_params(sampling, prompt_len, limit, stream):
    sampling = dict(sampling)
    if sampling.get("max_tokens", 0) > limit:
        raise InputError(f"input.sampling_params.max_tokens must be at most MAX_MODEL_LEN={limit}, "
                         f"got {sampling['max_tokens']}")
    max_tokens = sampling.pop("max_tokens", DEFAULT_MAX_TOKENS)
    return SamplingParams(
        # Never run past the context window: the answer gets what the prompt leaves.
        max_tokens=min(max_tokens, limit - prompt_len),
        # DELTA: each output holds only new text. When the worker is busy posting a
        # chunk, vLLM merges the deltas that arrive meanwhile, so chunks grow with
        # the client's latency: the first token goes out at once, and a long answer
        # needs far fewer HTTP posts than tokens.
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        **sampling,
    )


# %% cell 8 (id handler)
import asyncio
import time

_aborts = set()  # abort tasks in flight (the event loop keeps only weak references)


async def handler(job):
    """Runpod entry point. Yields {"text": part} chunks (stream) or one {"text": full}.

    Bad input yields one {"error": ...}, which fails the job; the worker goes on.
    """
    try:
        source, stream, sampling = parse_input(job.get("input"))
        engine = load_engine()
        prompt_ids = tokenize(engine, source)
        params = sampling_params(sampling, len(prompt_ids), engine.model_config.max_model_len,
                                 stream)
    except InputError as err:
        yield {"error": str(err)}
        return
    job_id = job.get("id", "job")
    request_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
    # The SDK stops a cancelled or timed-out job by cancelling its asyncio task. If that
    # lands at an await inside vLLM's generate(), vLLM aborts the request itself. But it
    # often lands while the SDK posts a chunk, with this generator left suspended and
    # vLLM still generating for nobody. So tie the request to the job's task: when the
    # task ends cancelled before the answer is complete, abort the request in vLLM.
    finished = False

    def abort_if_cancelled(task):
        if task.cancelled() and not finished:
            abort = asyncio.ensure_future(_abort(engine, request_id, job_id))
            _aborts.add(abort)
            abort.add_done_callback(_aborts.discard)

    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(abort_if_cancelled)
    outputs = engine.generate({"prompt_token_ids": prompt_ids}, params, request_id)
    if stream:
        # Chunking: vLLM hands out DELTA text, which merges while a chunk is posted. On
        # top of that, text is held back until the gap since the last chunk has passed:
        # none for the first text, then STREAM_INTERVAL_MS, doubling up to the maximum.
        pending, last_sent, gap = "", float("-inf"), 0.0
        async for output in outputs:
            pending += output.outputs[0].text
            now = time.monotonic()
            if pending and (output.finished or now - last_sent >= gap):
                finished = output.finished
                chunk, pending, last_sent = pending, "", now
                gap = min(max(2 * gap, STREAM_INTERVAL_MS / 1000), STREAM_INTERVAL_MAX_MS / 1000)
                yield {"text": chunk}
        finished = True
        if pending:  # an answer cut short without a final output
            yield {"text": pending}
    else:
        final = None
        async for final in outputs:
            pass
        finished = True
        yield {"text": final.outputs[0].text}


async def _abort(engine, request_id, job_id):
    await engine.abort(request_id)  # a no-op if vLLM already aborted or finished it
    processor = getattr(engine, "output_processor", None)
    running = processor.get_num_unfinished_requests() if processor is not None else "?"
    print(f"job {job_id} stopped: vLLM request {request_id} aborted "
          f"({running} request(s) still running)", flush=True)


# %% worker start-up: the kit's worker loop (from scripts/llmkit/worker_loop.py)
"""The kit's worker loop: the runpod SDK's production loop, with its timing fixed.

In runpod 1.10.0 (and 1.12) `JobScaler` (serverless/modules/rp_scale.py) decides when
to fetch a job in `get_jobs`: when it thinks the worker is full it sleeps a fixed
second. It thinks so too often, because a job it has taken counts twice (in its queue
and in its in-progress set) until the job starts. And `run_jobs` looks for fetched jobs
only every 0.1 s. So a queued job waits up to 1.1 s after a slot frees.
`kit_job_scaler` changes only those decisions:

* a taken job counts once (`current_occupancy`);
* a full worker fetches as soon as a job ends, not on the next 1 s tick (`set_scale`,
  the first await of every `get_jobs` round, returns when there is room);
* a fetched job starts at once, not on `run_jobs`' next 0.1 s tick.

Everything else is the SDK's own: the job-take and batch requests, the back-off when
the queue is empty or down, per-job stop, the heartbeat, the SIGTERM drain.
`WORKER_LOOP=sdk` runs the SDK's loop unchanged. docs/WORKER_LOOP.md has the details.

Also here: a worker that must die, dies (`serve_or_die`), and the SDK logs at INFO
unless told otherwise (`quiet_sdk_logs`).

This file is the one copy. `llmkit.export` pastes it into the footer of the generated
handler.py, which runs alone on an image; tests and the fake worker import it from
llmkit. So: the standard library only, runpod passed in, and no `from __future__`.
"""

import asyncio
import contextlib
import inspect
import multiprocessing
import os
import sys
import traceback
import urllib.parse
import urllib.request

# The SDK whose JobScaler internals the kit's loop was written against (pyproject pins it).
RUNPOD_VERSION = "1.10.0"
# "kit" (the default) or "sdk" (the SDK's own loop, unchanged).
WORKER_LOOP_VAR = "WORKER_LOOP"
# The JobScaler methods the kit's loop overrides or calls, with their parameters.
_SCALER_API = {
    "set_scale": ("self",),
    "current_occupancy": ("self",),
    "get_jobs": ("self", "session"),
    "run_jobs": ("self", "session"),
    "handle_job": ("self", "session", "job"),
    "is_alive": ("self",),
}


class StartupError(RuntimeError):
    """A start-up failure explained by its message: no traceback needed."""


class UnknownSDK(StartupError):
    """The installed runpod SDK is not the one the kit's worker loop was written for."""


def quiet_sdk_logs():
    """INFO unless RUNPOD_DEBUG_LEVEL (or RUNPOD_LOG_LEVEL) says otherwise.

    The SDK defaults to DEBUG: a line per poll and three per streamed chunk. It reads
    the level when runpod is imported, so call this first.
    """
    os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")


def check_sdk(runpod):
    """Raise UnknownSDK unless runpod's loop internals are the ones kit_job_scaler expects."""
    from runpod.serverless import worker
    from runpod.serverless.modules import rp_scale

    problems = []
    version = getattr(runpod, "__version__", "unknown")
    if version != RUNPOD_VERSION:
        problems.append(f"runpod is {version}, not {RUNPOD_VERSION}")
    scaler = getattr(rp_scale, "JobScaler", None)
    for name, params in _SCALER_API.items():
        method = getattr(scaler, name, None)
        if not callable(method):
            problems.append(f"JobScaler.{name} is missing")
        elif tuple(inspect.signature(method).parameters) != params:
            problems.append(f"JobScaler.{name}{inspect.signature(method)} is not "
                            f"{name}({', '.join(params)})")
    uses = {  # what each must still refer to for the overrides to take effect
        "JobScaler.get_jobs": (getattr(scaler, "get_jobs", None),
                               ("set_scale", "current_occupancy", "jobs_fetcher")),
        "JobScaler.__init__": (getattr(scaler, "__init__", None),
                               ("jobs_queue", "job_progress", "current_concurrency")),
        "worker.run_worker": (getattr(worker, "run_worker", None), ("rp_scale", "JobScaler")),
    }
    for where, (func, names) in uses.items():
        code = getattr(func, "__code__", None)
        missing = [n for n in names if code is None or n not in code.co_names]
        if missing:
            problems.append(f"{where} no longer uses {', '.join(missing)}")
    if problems:
        raise UnknownSDK(
            f"the kit's worker loop was written for runpod=={RUNPOD_VERSION} and does not "
            f"recognise this SDK ({'; '.join(problems)}). Install runpod=={RUNPOD_VERSION} "
            f"(the kit's pin), or set {WORKER_LOOP_VAR}=sdk to run the SDK's own loop.")


def kit_job_scaler(base):
    """A subclass of the SDK's JobScaler (``base``) that fetches a job when a slot frees."""
    from runpod.serverless.modules.rp_scale import log

    class KitJobScaler(base):
        """JobScaler that counts a taken job once, fetches when a job ends, starts at once."""

        def __init__(self, config):
            super().__init__(config)
            self._job_ended = asyncio.Event()

        def current_occupancy(self):
            # job_progress holds every job from its take to its end; the SDK added
            # the queue on top, counting a taken job twice until it started.
            count = self.job_progress.get_job_count()
            log.debug(f"JobScaler.status | concurrency: {self.current_concurrency}; "
                      f"queue: {self.jobs_queue.qsize()}; jobs: {count}")
            return count

        async def set_scale(self):
            # The first await of each get_jobs round. While the worker is full, wait
            # for a job to end instead of get_jobs' fixed 1 s sleep. The 1 s timeout
            # keeps the SDK's pace for a new concurrency value and for shutdown.
            await super().set_scale()
            while self.is_alive() and self.current_occupancy() >= self.current_concurrency:
                self._job_ended.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._job_ended.wait(), 1.0)
                await super().set_scale()

        async def handle_job(self, session, job):
            try:
                await super().handle_job(session, job)
            finally:
                self._job_ended.set()  # after the SDK's own clean-up: the slot is free

        async def run_jobs(self, session):
            # The SDK's run_jobs, woken by a queued job instead of a 0.1 s tick. The
            # 0.1 s timeout remains only to notice shutdown, as in the SDK.
            tasks = set()
            last_count = 0
            while self.is_alive() or not self.jobs_queue.empty():
                while len(tasks) < self.current_concurrency and not self.jobs_queue.empty():
                    tasks.add(self._start_job(session, self.jobs_queue.get_nowait()))
                if tasks and len(tasks) != last_count:
                    log.info(f"Jobs in progress: {len(tasks)}")
                    last_count = len(tasks)
                waiting = set(tasks)
                queued = None
                if len(tasks) < self.current_concurrency:
                    queued = asyncio.ensure_future(self.jobs_queue.get())
                    waiting.add(queued)
                done, _ = await asyncio.wait(waiting, timeout=0.1,
                                             return_when=asyncio.FIRST_COMPLETED)
                tasks -= done
                if queued is not None:
                    if queued.done():
                        tasks.add(self._start_job(session, queued.result()))
                    else:
                        queued.cancel()  # safe: a cancelled get() leaves the item queued
            # Drain as the SDK does: stopped jobs end cancelled, real errors are logged.
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(
                        result, asyncio.CancelledError):
                    log.error(f"JobScaler.run_jobs | Task failed during shutdown drain: "
                              f"{result}")

        def _start_job(self, session, job):
            task = asyncio.create_task(self.handle_job(session, job))
            self.jobs_tasks[job["id"]] = task
            return task

    KitJobScaler.kit_loop = True
    return KitJobScaler


def install(runpod):
    """Make runpod.serverless.start run the kit's loop; return "kit" or "sdk".

    Call before runpod.serverless.start. Raises UnknownSDK for an SDK whose internals
    differ, StartupError for a bad WORKER_LOOP.
    """
    from runpod.serverless.modules import rp_scale

    raw = os.environ.get(WORKER_LOOP_VAR, "").strip()
    choice = raw.lower() or "kit"
    if choice not in ("kit", "sdk"):
        raise StartupError(f"{WORKER_LOOP_VAR}={raw!r} is not valid: expected kit or sdk")
    if choice == "kit" and not getattr(rp_scale.JobScaler, "kit_loop", False):
        check_sdk(runpod)
        # worker.run_worker builds rp_scale.JobScaler(config): this is the one change.
        rp_scale.JobScaler = kit_job_scaler(rp_scale.JobScaler)
    return choice


def report_unhealthy(check, reason, timeout=2.0):
    """Tell the platform why this worker is about to exit, as runpod 1.11 does.

    One GET to the heartbeat URL with status=unhealthy, the check's name and the
    reason. Best effort: returns False, never raises, when it cannot be sent.
    """
    url, key = os.environ.get("RUNPOD_WEBHOOK_PING"), os.environ.get("RUNPOD_AI_API_KEY")
    worker_id = os.environ.get("RUNPOD_POD_ID")
    if not url or url == "PING_NOT_SET" or not key or not worker_id:
        return False
    runpod = sys.modules.get("runpod")
    query = urllib.parse.urlencode({
        "status": "unhealthy", "check": check, "reason": reason[:256],
        "runpod_version": getattr(runpod, "__version__", "unknown")})
    url = url.replace("$RUNPOD_POD_ID", worker_id)
    request = urllib.request.Request(url + ("&" if "?" in url else "?") + query,
                                     headers={"Authorization": key})
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
        return True
    except Exception:
        return False


def exit_now(code, check=None, reason=None):
    """End this process now with ``code``: report, flush, kill children, os._exit.

    sys.exit() only raises SystemExit; the interpreter then joins every non-daemon
    thread (vLLM's engine threads among them) and can hang forever.
    """
    if reason:
        print(f"worker exiting with code {code}: {reason}", file=sys.stderr, flush=True)
        if code:
            report_unhealthy(check or "start-up", reason)
    for child in multiprocessing.active_children():  # vLLM's engine core, the heartbeat
        with contextlib.suppress(Exception):
            child.kill()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _failed_check(exit):
    """(check name, reason) of a fitness check the SDK exited on, else None.

    runpod 1.10 calls sys.exit(1) inside the except block that caught the check's
    error, so that error is the SystemExit's __context__.
    """
    error = exit.__context__
    if error is None or isinstance(error, SystemExit):
        return None
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    if "run_fitness_checks" not in frames:
        return None
    index = frames.index("run_fitness_checks") + 1
    name = frames[index] if index < len(frames) else "fitness check"
    return name, f"fitness check {name} failed: {type(error).__name__}: {error}"


def serve_or_die(start_worker):
    """Run start_worker(); if it fails, end the process promptly with a non-zero code.

    A clean return (the SDK drained after SIGTERM) or sys.exit(0) exits as usual.
    """
    try:
        start_worker()
    except SystemExit as exit:
        if exit.code is None or exit.code == 0:
            raise
        if isinstance(exit.code, str):  # a message for the user, e.g. a bad setting
            exit_now(1, "start-up", exit.code)
        check = _failed_check(exit)
        if check is not None:
            exit_now(exit.code if isinstance(exit.code, int) else 1, *check)
        exit_now(exit.code if isinstance(exit.code, int) else 1, "start-up",
                 f"exited with {exit.code!r} during start-up")
    except StartupError as error:
        exit_now(1, "start-up", str(error))
    except KeyboardInterrupt:
        exit_now(130)
    except BaseException as error:
        traceback.print_exc()
        exit_now(1, "start-up", f"{type(error).__name__}: {error}")


# %% worker start-up (from handler_template/handler.py.j2)
def _exit_when_engine_dies(engine, stopping, interval=1.0):
    """Exit non-zero soon after vLLM's engine dies, so Runpod replaces this worker.

    Otherwise the worker would stay up, taking jobs and failing every one of them.
    `stopping` is set on a requested shutdown, when vLLM stops its engine on purpose.
    """
    import os
    import sys
    import threading
    import time

    def watch():
        while not engine.errored:
            time.sleep(interval)
        if stopping.is_set():
            return
        print("vLLM engine died: exiting so the platform replaces this worker",
              file=sys.stderr, flush=True)
        time.sleep(2 * interval)  # let the failed job's result go out first
        os._exit(1)

    threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()


def _start_worker():
    import importlib
    import threading

    quiet_sdk_logs()  # before runpod is imported: it reads the level then
    # Importing the runpod SDK takes a second or more (py-cpuinfo probes the CPU). Do it
    # while vLLM starts its engine, not before; and keep it out of the module top, which
    # vLLM's spawned processes import again.
    threading.Thread(target=importlib.import_module, args=("runpod",), daemon=True).start()
    stopping = threading.Event()
    # Start vLLM before taking jobs, so the first job does not pay for it.
    _exit_when_engine_dies(load_engine(), stopping)
    import runpod  # done by now; raises the real error if the import failed

    install(runpod)  # the kit's worker loop (WORKER_LOOP=sdk: the SDK's own)
    try:
        runpod.serverless.start(
            {
                "handler": handler,
                # Called on every job-fetch loop: how many jobs this worker runs at once.
                "concurrency_modifier": lambda current: CONCURRENCY_MODIFIER,
                # The job's final output is the list of chunks it streamed.
                "return_aggregate_stream": True,
            }
        )
    finally:
        stopping.set()  # a requested shutdown: vLLM stops its engine on purpose


if __name__ == "__main__":
    # A failed start-up (a fitness check, a bad setting, a broken engine) ends the
    # process at once with a non-zero code, not hanging on vLLM's threads.
    serve_or_die(_start_worker)
