"""What each of `make test`'s two pytest-xdist workers runs (``--dist loadgroup``).

A group runs whole on one worker, in collection order:
* every Docker build and container (the ``image`` marker) is one group, started first: the
  image is built once, and only one worker waits on builds while the other runs the host's
  modules, which leave one of the 2 cores idle much of the time (an engine start is three
  single-threaded imports of torch and vLLM);
* each other module is a group of its own, so its fixtures (engines, endpoints) start once;
* except that the modules sharing a session's engine (``SHARED``) are one group: a session
  fixture lives in its worker's process, so two workers would each start that engine (a
  clean-clone run saw both the live worker and the in-process engine started twice).
"""

from __future__ import annotations

import time

IMAGE_GROUP = "docker"
# Session fixtures that start an engine, and the group of the modules that use them
# (``served`` takes the live worker by name, for its host variant).
SHARED = {"live_endpoint": "live-worker", "served": "live-worker",
          "plain_in_process": "in-process-engine"}


def module(item) -> str:
    return item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")


def group(item, shared=None) -> str:
    if item.get_closest_marker("image"):
        return IMAGE_GROUP
    return (shared or {}).get(module(item)) or module(item)


def assign(config, items) -> None:
    """Called from conftest's ``pytest_collection_modifyitems``; a no-op outside xdist."""
    if not config.getoption("loadgroup", False):  # set in each worker of --dist loadgroup
        return
    shared = {}  # module -> the shared engine's group, when a test of its uses one
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in SHARED and not item.get_closest_marker("image"):
                shared[module(item)] = SHARED[fixture]
    items.sort(key=lambda item: group(item) != IMAGE_GROUP)  # stable: groups keep their order
    for item in items:
        _join(item, group(item, shared))


def _join(item, name: str) -> None:
    """What ``@pytest.mark.xdist_group(name)`` means to do: xdist's scheduler groups tests by
    the ``@name`` suffix of their ids. pytest-xdist 3.8.0 writes that suffix to
    ``item._nodeid``, which pytest 9 no longer reads (a node's id is ``item._id``), so its
    mark groups nothing. tests/test_xdist_groups.py checks that this does."""
    item._id = type(item._id).parse(f"{item.nodeid}@{name}")


class Timeline:
    """Where `make test`'s wall time went: each group's span on its worker, printed at the
    end of the run (registered by conftest on the xdist controller). The longer worker is
    the run's critical path, and its largest groups are what to cut to make CI faster."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.spans: dict[tuple[str, str], list[float]] = {}  # (worker, group) -> [first, last]

    def pytest_runtest_logreport(self, report) -> None:
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", "?")
        group_name = report.nodeid.rsplit("@", 1)[-1] if "@" in report.nodeid else "?"
        now = time.monotonic() - self.start
        span = self.spans.setdefault((worker, group_name), [now - report.duration, now])
        span[1] = now

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.spans:
            return
        write = terminalreporter.write_line
        terminalreporter.section("time by worker and group (wall seconds)")
        for worker in sorted({w for w, _ in self.spans}):
            groups = sorted(((g, s) for (w, g), s in self.spans.items() if w == worker),
                            key=lambda item: item[1][0])
            busy = sum(last - first for _, (first, last) in groups)
            end = max(last for _, (_, last) in groups)
            write(f"{worker}: ends at {end:.0f} s, {busy:.0f} s in {len(groups)} groups")
            longest = sorted(groups, key=lambda g: g[1][0] - g[1][1])
            for name, (first, last) in [g for g in longest if g[1][1] - g[1][0] >= 10] \
                    or longest[:1]:
                write(f"  {last - first:6.0f} s  {name}  ({first:.0f}-{last:.0f})")
