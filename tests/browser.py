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
