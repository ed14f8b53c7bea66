"""Headless Chromium for the tests: Debian's browser, driven by playwright (never
`playwright install`, which downloads a browser of its own)."""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root in a sandbox with no network: no sandbox, no GPU, and none of the background
# connections a closed network refuses at every start.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync"]


def launch(playwright):
    """A headless Chromium from a ``sync_playwright()`` context."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)


def run_all_then_generate(page, prompt: str, fail) -> dict:
    """In an open handler_dev.ipynb: Run > Run All Cells, then the playground's Generate at
    temperature 0, as a person does. Returns what was seen: the answer at each change while
    it streamed, the figures line, and the playground's widgets (a locator, for a picture).
    ``fail(message)`` is called when the playground never appears."""
    import re
    import time

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # The kernel connected and idle, as the status bar says ("... | Idle"): "Run All"
    # clicked while it still connects can be dropped by JupyterLab.
    page.get_by_text(re.compile(r"runpod-llm-kit\)\s*\|\s*Idle")).first.wait_for()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    # The first cell runs at once ([*] or [1]), or something is wrong: say so now.
    page.locator(".jp-InputPrompt", has_text=re.compile(r"\[[*0-9]+\]")).first.wait_for(
        timeout=60_000)
    go = page.get_by_role("button", name="Generate")
    try:
        go.wait_for(timeout=600_000)
    except PlaywrightTimeout:
        errors = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts()
                  if "Error" in t or "Traceback" in t]
        fail(f"the playground never appeared; cell errors: {errors[-2:]}")
    # Run All goes on through the tests and the export; its last cell prints "wrote ...".
    page.locator(".jp-OutputArea-output", has_text=re.compile(r"^wrote ")).first.wait_for(
        timeout=600_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=300_000)
    boxes = page.locator(".widget-textarea textarea")
    prompt_box, answer = boxes.nth(0), boxes.nth(1)
    prompt_box.fill(prompt)
    readout = page.locator(".widget-hslider", has_text="temperature").locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("0")
    page.keyboard.press("Enter")
    go.click()
    seen, last, deadline = [], "", time.monotonic() + 300
    figures = page.locator(".widget-label", has_text="stopped:").first
    while time.monotonic() < deadline and not figures.count():
        value = answer.input_value()
        if value != last:
            seen.append(value)
            last = value
        time.sleep(0.05)
    seen.append(answer.input_value())
    widget = page.locator(".widget-vbox", has=page.get_by_role("button", name="Generate"))
    return {"seen": seen, "figures": figures.inner_text(), "widget": widget.first}
