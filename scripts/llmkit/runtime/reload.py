"""Handler reload: a worker picks up a new handler.py without restarting vLLM.

With HANDLER_RELOAD=true the worker watches the handler.py it was started from. When the
file changes, the new file is loaded beside the running one; if it loads, new jobs go to
its `handler` (and `chat_messages`), on the same engine, while jobs in flight finish on
the old one. If it does not (a syntax error, a failed import, no `handler`, a file caught
half-written), the old handler keeps serving and the log says why, naming the file and
the line. Each outcome is reported on the worker's heartbeat URL, so the local endpoint's
/health and /workers show which handler serves (its content hash) and whether the last
reload failed.

Engine settings come from the environment at start. A new file that changes them (it sets
a variable at import) is still served, and the log says that the settings apply only on
a restart.

Production workers watch nothing unless HANDLER_RELOAD says so.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import itertools
import os
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass, field

from llmkit.runtime import logs, versions
from llmkit.runtime.errors import ReloadError
from llmkit.runtime.lifecycle import ping

log = logs.get("reload")

POLL_S = 0.5    # how often the file is looked at: a stat, nothing more
SETTLE_S = 0.2  # a changed file must hold still this long before it is loaded
_PREFIX = "llmkit_reloaded_handler_"  # the modules of reloaded handlers, numbered
_names = itertools.count(1)


def digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()[:12]


def file_stat(path):
    try:
        s = os.stat(path)
        return s.st_mtime_ns, s.st_size, s.st_ino
    except (OSError, TypeError):
        return None


@dataclass
class Served:
    """The handler a worker runs now: read at each job's start, replaced whole on reload."""
    pair: tuple  # (handler, chat_messages): one attribute, so a job never gets half of each
    path: str | None = None
    sha: str | None = None
    reloads: int = 0
    last_error: str | None = None     # the last reload's failure, None once one succeeds
    restart_needed: list = field(default_factory=list)  # settings that changed since start
    stat: tuple | None = None  # the file's (mtime, size, inode) when sha was taken

    @classmethod
    def of(cls, handler, chat_messages=None):
        """The handler a worker starts with, and its file's hash as it is now."""
        served = cls((handler, chat_messages), path=inspect.getsourcefile(handler))
        served.stat = file_stat(served.path)
        try:
            with open(served.path, "rb") as f:
                served.sha = digest(f.read())
        except (OSError, TypeError):
            pass  # no file (a handler made in a notebook): nothing to watch
        return served

    def current(self):
        return self.pair

    def report(self) -> dict:
        return {"handler": self.sha, "handler_file": self.path, "reloads": self.reloads,
                "reload": "failed" if self.last_error else "ok",
                "reload_error": self.last_error or "",
                "restart_needed": ",".join(self.restart_needed)}


def load(path: str, source: bytes):
    """(handler, chat_messages) of a handler.py's ``source``; raises ReloadError."""
    try:
        tree = ast.parse(source, path)
    except SyntaxError as err:
        raise ReloadError(f"{path}, line {err.lineno}: SyntaxError: {err.msg}") from None
    calls = {getattr(n.func, "id", getattr(n.func, "attr", None)): n for n in ast.walk(tree)
             if isinstance(n, ast.Call)}
    # The worker start-up, serve(...), is a handler.py's last statement: without it the
    # file is cut short (caught while being written) or is not a worker.
    if "serve" not in calls:
        raise ReloadError(f"{path}: no call to serve() (the worker start-up at the end of "
                          "every handler.py): the file looks half-written")
    wanted = calls.get("require")  # the runtime API the export stamped
    if wanted is not None and wanted.args and isinstance(wanted.args[0], ast.Constant):
        reason = versions.mismatch(str(wanted.args[0].value))
        if reason:
            raise ReloadError(f"{path}, line {wanted.lineno}: {reason}")
    name = f"{_PREFIX}{next(_names)}"
    module = types.ModuleType(name)
    module.__file__ = path  # __name__ is not "__main__": the footer's serve() does not run
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        exec(compile(tree, path, "exec", dont_inherit=True), module.__dict__)
    except BaseException as err:  # whatever the file raises, the old one serves
        del sys.modules[name]
        line = next((f.lineno for f in reversed(traceback.extract_tb(err.__traceback__))
                     if f.filename == path), None)
        where = f"{path}, line {line}" if line else path
        raise ReloadError(f"{where}: {type(err).__name__}: {err}") from None
    handler = getattr(module, "handler", None)
    if not inspect.isasyncgenfunction(handler):
        raise ReloadError(f"{path}: defines no handler: expected an async generator "
                          "function `async def handler(job):` that yields chunks")
    return handler, getattr(module, "chat_messages", None)


def settings_changed() -> list[str]:
    """The variables whose value now differs from the running engine's settings."""
    from llmkit.runtime import config, vllm_engine  # vLLM: only in a worker

    running = vllm_engine.settings()
    try:
        now = config.load()
    except config.SettingsError as err:
        return [str(err)]
    names = [k for k in set(running.used) | set(now.used)
             if running.used.get(k) != now.used.get(k)]
    names += ["MODEL"] if running.model != now.model else []
    names += [k.upper() for k, v in running.kit if getattr(now.kit, k) != v]  # kit_settings.py
    return sorted(names)


class Watcher:
    """Polls ``served.path`` from a daemon thread and swaps in each new handler that loads."""

    def __init__(self, served: Served, poll_s: float = POLL_S):
        self.served, self.poll_s = served, poll_s
        self._seen = served.stat
        self._failed_sha = None

    def _stat(self):
        return file_stat(self.served.path)

    def start(self):
        if self.served.sha is None:
            log.warning(f"handler reload: nothing to watch: {self.served.path} cannot be read")
            return self
        log.info(f"handler reload: watching {self.served.path} (sha256 {self.served.sha})")
        ping(self.served.report())
        threading.Thread(target=self._run, name="handler-reload", daemon=True).start()
        return self

    def _run(self):
        while True:
            time.sleep(self.poll_s)
            try:
                self.check()
            except Exception as err:  # the watcher must outlive any surprise
                log.error(f"handler reload: watcher error: {type(err).__name__}: {err}")

    def check(self):
        stat = self._stat()
        if stat is None or stat == self._seen:
            return
        time.sleep(SETTLE_S)  # an editor or an exporter may still be writing
        if self._stat() != stat:
            return  # still changing: look again on the next poll
        self._seen = stat
        try:
            with open(self.served.path, "rb") as f:
                source = f.read()
        except OSError:
            return
        sha = digest(source)
        if sha in (self.served.sha, self._failed_sha):
            return  # touched, or rewritten as it was
        started = time.monotonic()
        try:
            handler, chat_messages = load(self.served.path, source)
        except ReloadError as err:
            self._failed_sha = sha
            self.served.last_error = str(err)
            log.error(f"handler reload: FAILED, still serving sha256 {self.served.sha}: {err}")
        else:
            served, old = self.served, self.served.sha
            replaced = served.pair[0].__module__
            # One assignment: a job starting now gets either the old pair or the new one.
            served.pair = (handler, chat_messages)
            if replaced.startswith(_PREFIX):  # jobs still on it keep its globals alive
                sys.modules.pop(replaced, None)
            served.sha, served.last_error, self._failed_sha = sha, None, None
            served.reloads += 1
            served.restart_needed = settings_changed()
            log.info(f"handler reload: now serving {served.path} sha256 {sha} (was {old}), "
                     f"loaded in {time.monotonic() - started:.2f} s; jobs in flight finish on "
                     "the old one")
            if served.restart_needed:
                log.warning("handler reload: engine settings differ from the running "
                            "engine's ("
                     f"{', '.join(served.restart_needed)}): they apply only when the worker "
                     "restarts; the new handler serves on the running engine meanwhile")
        ping(self.served.report())
