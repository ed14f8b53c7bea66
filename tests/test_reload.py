"""Handler reload, the pure part (llmkit/runtime/reload.py): what loads, what is refused and
why, and the watcher's swap. No engine: tests/test_reload_worker.py runs it in a worker."""

from __future__ import annotations

import os
import textwrap

import pytest

from llmkit.runtime import reload

GOOD = '''
from llmkit.runtime import serve

VERSION = {version!r}


async def handler(job):
    yield {{"text": "hi", "version": VERSION}}


if __name__ == "__main__":
    serve(handler)
'''


def good(version="v1"):
    return GOOD.format(version=version)


@pytest.fixture
def handler_file(tmp_path, monkeypatch):
    monkeypatch.setattr(reload, "settings_changed", lambda: [])  # no engine here
    path = tmp_path / "handler.py"
    path.write_text(good("v1"))
    return path


def load_text(path, text):
    return reload.load(str(path), text.encode())


def test_a_good_file_loads_its_handler_and_hook(handler_file):
    text = good("v2") + "\ndef chat_messages(messages):\n    return messages\n"
    handler, hook = load_text(handler_file, text)
    assert handler.__name__ == "handler" and hook.__name__ == "chat_messages"
    assert handler.__globals__["VERSION"] == "v2"
    assert handler.__globals__["__name__"] != "__main__", "the footer's serve() must not run"


@pytest.mark.parametrize("text, expected", [
    (good().replace('yield {"text"', 'yield {"text"('), r"handler\.py, line 8: SyntaxError"),
    ("import no_such_module_here\n" + good(),
     r"handler\.py, line 1: ModuleNotFoundError: No module named 'no_such_module_here'"),
    (good().replace("VERSION = 'v1'", "VERSION = {}['v1']"), r"handler\.py, line 4: KeyError"),
    (good().replace("async def handler", "async def handle"),
     r"handler\.py: defines no handler: expected an async generator function"),
    (good().replace("async def handler(job):\n    yield", "def handler(job):\n    return"),
     r"defines no handler"),
    (good()[:good().index("if __name__")], r"no call to serve\(\).*half-written"),
    (good().replace("serve(handler)", "require('9.0')\n    serve(handler)"),
     r"line 12: handler.py was written for the kit's runtime API 9\.0"),
], ids=["syntax", "import", "raises", "no-handler", "not-async-generator", "half-written",
        "runtime-api"])
def test_a_bad_file_is_refused_naming_the_file_and_line(handler_file, text, expected):
    with pytest.raises(reload.ReloadError, match=expected) as error:
        load_text(handler_file, text)
    assert str(handler_file) in str(error.value)


def served_from(path):
    first, _ = load_text(path, path.read_text())
    served = reload.Served.of(first)
    return served, reload.Watcher(served, poll_s=0)


def version_of(served):
    handler, _ = served.current()
    return handler.__globals__["VERSION"]


def rewrite(path, text):
    path.write_text(text)
    stat = path.stat()  # a new mtime even within the file system's clock tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_the_watcher_swaps_in_a_new_file_and_keeps_the_old_one_on_failure(handler_file):
    served, watcher = served_from(handler_file)
    assert served.path == str(handler_file) and served.sha == reload.digest(
        handler_file.read_bytes())
    assert version_of(served) == "v1"

    watcher.check()  # nothing changed
    assert served.reloads == 0

    rewrite(handler_file, good("v2"))
    watcher.check()
    assert version_of(served) == "v2" and served.reloads == 1 and served.last_error is None
    v2_sha = served.sha

    rewrite(handler_file, "import no_such_module_here\n" + good("v3"))
    watcher.check()
    assert version_of(served) == "v2", "a file that fails leaves the old handler serving"
    assert served.sha == v2_sha and "no_such_module_here" in served.last_error
    assert served.report()["reload"] == "failed" and served.report()["handler"] == v2_sha

    rewrite(handler_file, good("v4"))
    watcher.check()
    assert version_of(served) == "v4" and served.last_error is None and served.reloads == 2


def test_a_touch_or_the_same_bytes_again_reload_nothing(handler_file):
    served, watcher = served_from(handler_file)
    rewrite(handler_file, handler_file.read_text())
    watcher.check()
    assert served.reloads == 0 and served.last_error is None


def test_a_job_in_flight_keeps_the_handler_it_started_with(handler_file):
    import asyncio

    from llmkit.runtime.jobs import job_function

    served, watcher = served_from(handler_file)
    job = job_function(None, current=served.current)

    async def scenario():
        old = job({"id": "a", "input": {}})
        first = await anext(old)  # started on v1
        rewrite(handler_file, good("v2"))
        watcher.check()
        rest = [chunk async for chunk in old]
        new = [chunk async for chunk in job({"id": "b", "input": {}})]
        return first, rest, new

    first, rest, new = asyncio.run(scenario())
    assert first["version"] == "v1" and rest == []
    assert new == [{"text": "hi", "version": "v2"}]


def test_changed_engine_settings_are_reported(handler_file, monkeypatch):
    served, watcher = served_from(handler_file)
    monkeypatch.setattr(reload, "settings_changed", lambda: ["MAX_MODEL_LEN"])
    rewrite(handler_file, good("v2"))
    watcher.check()
    assert version_of(served) == "v2"
    assert served.report()["restart_needed"] == "MAX_MODEL_LEN"


@pytest.mark.vllm
def test_the_reload_setting_is_checked_by_name():
    from llmkit.runtime import config

    assert config.load({"MODEL": "m"}).kit.handler_reload is False
    assert config.load({"MODEL": "m", "HANDLER_RELOAD": "true"}).kit.handler_reload is True
    with pytest.raises(config.SettingsError, match="HANDLER_RELOAD='sometimes' is not valid: "
                       "expected true or false"):
        config.load({"MODEL": "m", "HANDLER_RELOAD": "sometimes"})


def test_reload_imports_no_vllm():
    import subprocess
    import sys

    code = textwrap.dedent("""
        import sys
        import llmkit.runtime.reload
        print("vllm" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
