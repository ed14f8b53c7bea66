"""Every place the kit relies on the runpod SDK beyond its public `runpod.serverless.start`,
in one list, with the SDK versions each was read from.

The kit pins `runpod==1.10.0` (vLLM's fastapi pin keeps 1.12 out). Each touchpoint below was
read in the source of 1.10.0 and again in 1.12.0. An SDK bump starts here: read each one in
the new release, then update `READ_IN`. `worker_loop.check_sdk` checks the loop's
touchpoints at start (a worker on another SDK refuses the kit's loop, naming what
differs); tests/test_runpod_sdk.py checks that each importable one is in the installed SDK.

The standard library only: the local endpoint's toy workers import it without vLLM.
"""

from __future__ import annotations

import dataclasses

# The SDK the kit's loop was written against (pyproject pins it), and the releases every
# touchpoint below was read in.
PINNED = "1.10.0"
READ_IN = ("1.10.0", "1.12.0")


@dataclasses.dataclass(frozen=True)
class Touchpoint:
    place: str  # "module:attribute" in the SDK, or a protocol the SDK defines
    used_by: str  # the kit's module that relies on it
    why: str


TOUCHPOINTS = (
    Touchpoint("runpod.serverless.modules.rp_scale:JobScaler", "worker_loop.py",
               "subclassed: the kit's loop changes when a job is fetched and started "
               "(the methods and names in SCALER_METHODS and SCALER_USES)"),
    Touchpoint("runpod.serverless.worker:run_worker", "worker_loop.py",
               "builds the JobScaler from rp_scale at each start, so replacing "
               "rp_scale.JobScaler puts the kit's loop in"),
    Touchpoint("runpod.serverless.modules.rp_scale:log", "worker_loop.py",
               "the SDK's logger, so the kit's loop logs as the SDK's does"),
    Touchpoint("runpod.serverless.modules.rp_job:stream_result", "worker_loop.py",
               "handle_job posts each streamed chunk through it: WORKER_LOOP_TRACE times "
               "each post (timeline.py)"),
    Touchpoint("runpod.serverless.modules.worker_state:JobsProgress", "lifecycle.py",
               "its _instance, the set of jobs in progress: the kit's heartbeat names them, "
               "as the SDK's own does"),
    Touchpoint("runpod.serverless.modules.rp_fitness:run_fitness_checks", "lifecycle.py",
               "a failed fitness check calls sys.exit(1) inside it: the frame's name tells "
               "the kit which check failed, to report it before exiting"),
    Touchpoint("RUNPOD_WEBHOOK_PING, RUNPOD_AI_API_KEY, RUNPOD_POD_ID (environment)",
               "lifecycle.py",
               "the heartbeat's URL ($RUNPOD_POD_ID in it), key and worker id; the kit pings "
               "unhealthy before a worker exits, as runpod 1.11 does"),
    Touchpoint("RUNPOD_DEBUG_LEVEL (environment)", "worker_loop.py",
               "read once when runpod is imported: the kit sets INFO first (the SDK's "
               "default, DEBUG, logs three lines per streamed chunk)"),
    Touchpoint(".runpod_jobs.pkl (working directory)", "scripts/start.sh",
               "the SDK's record of jobs in progress: a fresh folder per start, so a "
               "restarted container does not wait for a dead job"),
)

# The JobScaler methods the kit's loop overrides or calls, with their parameters.
SCALER_METHODS = {
    "set_scale": ("self",),
    "current_occupancy": ("self",),
    "get_jobs": ("self", "session"),
    "run_jobs": ("self", "session"),
    "handle_job": ("self", "session", "job"),
    "is_alive": ("self",),
    "kill_worker": ("self",),
}
# What each SDK function must still refer to for the overrides to take effect.
SCALER_USES = {
    "JobScaler.get_jobs": ("set_scale", "current_occupancy", "jobs_fetcher"),
    "JobScaler.__init__": ("jobs_queue", "job_progress", "current_concurrency",
                           "jobs_fetcher", "stop_signals_fetcher", "_shutdown_event"),
    "JobScaler.monitor_stop_signals": ("stop_signals_fetcher",),
    "worker.run_worker": ("rp_scale", "JobScaler"),
}


def importable() -> list[Touchpoint]:
    """The touchpoints that name a module and an attribute (the rest are protocols)."""
    return [t for t in TOUCHPOINTS if ":" in t.place and " " not in t.place]
