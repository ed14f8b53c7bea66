"""A person's first minutes in a pod: open Jupyter Lab in a browser, log in with
JUPYTER_PASSWORD, land in the development notebook; Run All, then prompt the model in the
playground.

start.sh runs in pod mode for real; headless Chromium (Debian's /usr/bin/chromium,
driven by the `playwright` package, whose own browser download is never used)
does the clicking. The screenshots go to build/ (ignored by git): a routine run rewrites no
tracked file. `make docs-screenshot` (UPDATE_DOCS_SCREENSHOT=1) writes the README's
pictures, docs/jupyter-lab.png and docs/playground.png, on purpose.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from browser import CHROMIUM, run_all_then_generate
from browser import launch as browser_launch
from test_start_sh import base_env, launch, wait_for_jupyter

from llmkit.paths import REPO_ROOT

UPDATE_DOCS = os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "jupyter-lab.png"
SCREENSHOT = DOCS_SCREENSHOT if UPDATE_DOCS else REPO_ROOT / "build" / "jupyter-lab.png"
DOCS_PLAYGROUND = REPO_ROOT / "docs" / "playground.png"
PLAYGROUND = DOCS_PLAYGROUND if UPDATE_DOCS else REPO_ROOT / "build" / "playground.png"
PASSWORD = "runpod-llm-kit test password"

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")


def git_status(path: Path) -> str | None:
    """`git status --porcelain` for one path; None outside a git checkout."""
    result = subprocess.run(["git", "status", "--porcelain", "--", str(path)], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def test_the_routine_screenshot_is_ignored_by_git():
    if git_status(REPO_ROOT) is None:
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "build/jupyter-lab.png"],
                             cwd=REPO_ROOT)
    assert ignored.returncode == 0, "build/jupyter-lab.png must be ignored by git"


def start_jupyter(tmp_path, **env):
    env = base_env(tmp_path, MODE_TO_RUN="pod", JUPYTER_PASSWORD=PASSWORD, **env)
    run = launch(tmp_path, env)
    try:
        wait_for_jupyter(run)
        yield f"http://127.0.0.1:{env['JUPYTER_PORT']}"
    finally:
        kill_kernels(run.proc.pid)
        run.kill_group()


def kill_kernels(pid):
    """Jupyter starts each kernel in a process group of its own, which start.sh's group
    does not hold, and a kernel's vLLM engine (in the kernel's group) would outlive it."""
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                os.killpg(child.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            pass


@pytest.fixture
def jupyter(tmp_path):
    yield from start_jupyter(tmp_path)


@pytest.fixture
def jupyter_with_model(tmp_path):
    """A pod whose MODEL is the embedded default, as a pod of the default image has."""
    from llmkit.models import DEFAULT_MODEL, resolve

    yield from start_jupyter(tmp_path, MODEL=str(resolve(DEFAULT_MODEL)), MAX_MODEL_LEN="2048")


def log_in(page, url):
    page.goto(url)
    page.wait_for_selector("#password_input")
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url("**/lab/tree/notebooks/handler_dev.ipynb**")


@needs_chromium
def test_log_in_and_open_the_development_notebook(jupyter):
    docs_before = git_status(DOCS_SCREENSHOT), DOCS_SCREENSHOT.read_bytes()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")
    with sync_api.sync_playwright() as p:
        browser = browser_launch(p)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            # Without credentials the server shows its login page, never the lab.
            page.goto(jupyter)
            page.wait_for_selector("#password_input")
            assert "/login" in page.url
            page.fill("#password_input", "wrong password")
            page.click("#login_submit")
            page.wait_for_selector("#password_input")
            assert "/login" in page.url

            page.fill("#password_input", PASSWORD)
            page.click("#login_submit")
            # start.sh points the default URL at the notebook.
            page.wait_for_url("**/lab/tree/notebooks/handler_dev.ipynb**")
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
            notebook.wait_for()
            heading = page.locator(".jp-MarkdownOutput h1", has_text="Your handler")
            heading.first.wait_for()
            page.get_by_text("async def handler(job):").first.wait_for()
            # The notebook's own kernel, idle and ready.
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                timeout=120_000)
            kernel = page.locator(".jp-Toolbar-kernelName").first.inner_text()
            assert "runpod-llm-kit" in kernel, kernel
            assert page.get_by_text("official Jupyter news").count() == 0, "no news pop-up"
            page.wait_for_timeout(500)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 20_000
    assert Path(SCREENSHOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if SCREENSHOT != DOCS_SCREENSHOT:
        docs_after = git_status(DOCS_SCREENSHOT), DOCS_SCREENSHOT.read_bytes()
        assert docs_after == docs_before, "a routine run rewrote docs/jupyter-lab.png"


@needs_chromium
@pytest.mark.engine
def test_the_playground_streams_an_answer_with_its_figures(jupyter_with_model):
    """Run All, then Generate: the answer grows as it streams, and the figures line says how
    fast it came, how many tokens it took and why it stopped."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")
    docs_before = git_status(DOCS_PLAYGROUND)
    with sync_api.sync_playwright() as p:
        browser = browser_launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(120_000)
            log_in(page, jupyter_with_model)
            shown = run_all_then_generate(page, "What is the capital of France?", pytest.fail)
            PLAYGROUND.parent.mkdir(parents=True, exist_ok=True)
            shown["widget"].scroll_into_view_if_needed()
            shown["widget"].screenshot(path=str(PLAYGROUND))
        finally:
            browser.close()
    seen, figures = shown["seen"], shown["figures"]
    assert len(seen) >= 2 and seen[-1], seen
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False)), seen
    assert re.match(r"first text [\d.]+ s · [\d.]+ tok/s · \d+ prompt \+ \d+ answer tokens · "
                    r"stopped: (stop|length) ", figures), figures
    assert PLAYGROUND.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if PLAYGROUND != DOCS_PLAYGROUND:
        assert git_status(DOCS_PLAYGROUND) == docs_before, "a routine run rewrote the picture"
