"""The runtime's logs (runtime/logs.py): the runpod SDK's line format, the job's id on each
line a job logs (concurrent jobs kept apart), Runpod's JSON, and LOG_LEVEL."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from llmkit.runtime import logs
from llmkit.runtime.errors import SettingsError
from llmkit.runtime.jobs import run_job

pytestmark = pytest.mark.vllm  # jobs.py reaches the OpenAI route, which imports vLLM
log = logs.get("test")


async def chatty(job):
    log.info("started")
    await asyncio.sleep(0.01)  # the other job logs meanwhile
    log.warning("half way")
    yield {"text": job["input"]["prompt"]}


def lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_each_line_a_job_logs_carries_its_id_and_concurrent_jobs_keep_theirs(capsys):
    async def two():
        return await asyncio.gather(run_job(chatty, {"prompt": "a"}, job_id="job-a"),
                                    run_job(chatty, {"prompt": "b"}, job_id="job-b"))

    assert asyncio.run(two()) == [[{"text": "a"}], [{"text": "b"}]]
    log.info("between jobs")
    got = lines(capsys)
    assert sorted(got[:4]) == sorted(["INFO   | job-a | started", "INFO   | job-b | started",
                                      "WARN   | job-a | half way", "WARN   | job-b | half way"])
    assert got[4:] == ["INFO   | between jobs"]  # the job's id ends with the job


def test_on_runpod_a_line_is_the_sdks_json_with_the_request_id(capsys, monkeypatch):
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "ep-1")
    asyncio.run(run_job(chatty, {"prompt": "a"}, job_id="job-a"))
    log.error("outside")
    assert [json.loads(line) for line in lines(capsys)] == [
        {"requestId": "job-a", "message": "started", "level": "INFO"},
        {"requestId": "job-a", "message": "half way", "level": "WARN"},
        {"requestId": None, "message": "outside", "level": "ERROR"}]


def test_an_unexpected_error_is_logged_with_the_job_id_and_its_traceback(capsys):
    async def broken(job):
        raise RuntimeError("kaboom")
        yield  # an async generator

    out = asyncio.run(run_job(broken, {"prompt": "a"}, job_id="job-x"))
    assert out == [{"error": "job job-x failed with an internal error; the worker's log has "
                             "the details"}]
    err = capsys.readouterr().err
    assert err.startswith("ERROR  | job-x | job job-x failed unexpectedly:\nTraceback")
    assert "RuntimeError: kaboom" in err


@pytest.mark.parametrize(("raw", "level"), [("", logging.INFO), ("debug", logging.DEBUG),
                                            ("WARN", logging.WARNING), ("ERROR", logging.ERROR)])
def test_log_level_names_the_level(raw, level):
    assert logs.level({"LOG_LEVEL": raw}) == level


def test_a_bad_log_level_is_an_error_naming_the_variable():
    with pytest.raises(SettingsError, match=r"^LOG_LEVEL='loud' is not valid: expected "
                                            r"DEBUG, INFO, WARNING or ERROR$"):
        logs.level({"LOG_LEVEL": "loud"})


def test_the_root_logger_is_left_alone():
    assert not any(isinstance(h, logs._Stderr) for h in logging.getLogger().handlers)
    assert logging.getLogger("llmkit").propagate is False
