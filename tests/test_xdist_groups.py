"""`make test`'s worker groups (tests/xdist_groups.py), on a toy suite run as `make test`
runs the real one: two xdist workers, --dist loadgroup."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOY = {
    "conftest.py": f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import xdist_groups

        def pytest_configure(config):
            if config.getoption("dist", "no") == "loadgroup" and not hasattr(config, "workerinput"):
                config.pluginmanager.register(xdist_groups.Timeline(), "xdist-timeline")

        def pytest_collection_modifyitems(config, items):
            xdist_groups.assign(config, items)

        import pytest

        @pytest.fixture(scope="session")
        def live_endpoint():  # as the real one: an engine each worker process would start
            yield
        """,
    # Two modules sharing the live worker: one group, so one worker starts it.
    "test_live_a.py": """
        import time
        def test_a(live_endpoint): time.sleep(0.3)
        def test_a_plain(): time.sleep(0.3)
        """,
    "test_live_b.py": """
        import time
        def test_b(live_endpoint): time.sleep(0.3)
        """,
    # A module with a host and a container variant, as endpoint_fixtures.served makes them.
    "test_mixed.py": """
        import pytest, time
        CONTAINER = pytest.param("container", marks=pytest.mark.image)
        @pytest.mark.parametrize("where", ["host", CONTAINER])
        def test_served(where): time.sleep(0.3)
        def test_host_only(): time.sleep(0.3)
        """,
    "test_images.py": """
        import pytest, time
        pytestmark = pytest.mark.image
        def test_build(): time.sleep(0.8)  # the image group is its worker's longest:
        def test_run(): time.sleep(0.8)    # the summary shows it whatever else ran there
        """,
    "test_host.py": """
        import time
        def test_one(): time.sleep(0.3)
        def test_two(): time.sleep(0.3)
        def test_three(): time.sleep(0.3)
        """,
}


def test_each_group_runs_whole_on_one_worker_and_the_image_group_first(tmp_path):
    for name, text in TOY.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup",
         "--no-loadscope-reorder", "-v", "-p", "no:cacheprovider", "-o", "addopts="],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"^\[(gw\d)\] .*PASSED (\S+) *$", proc.stdout, re.M)
    assert len(ran) == 11, proc.stdout
    workers: dict[str, set] = {}
    for worker, test in ran:
        workers.setdefault(test.rsplit("@", 1)[1], set()).add(worker)
    assert {g: len(w) for g, w in workers.items()} == {
        "docker": 1, "test_mixed": 1, "test_host": 1, "live-worker": 1}, ran
    live = sorted(t for _, t in ran if t.endswith("@live-worker"))
    assert live == ["test_live_a.py::test_a@live-worker",
                    "test_live_a.py::test_a_plain@live-worker",
                    "test_live_b.py::test_b@live-worker"], ran
    docker = [t for _, t in ran if t.endswith("@docker")]
    assert sorted(docker) == ["test_images.py::test_build@docker",
                              "test_images.py::test_run@docker",
                              "test_mixed.py::test_served[container]@docker"]
    # The image's group is the first unit xdist hands out: its worker starts with it.
    image_worker = workers["docker"].pop()
    first = next(t for w, t in ran if w == image_worker)
    assert first.endswith("@docker"), ran
    # The closing summary: each worker's groups, with their spans.
    summary = proc.stdout.split("time by worker and group", 1)[1]
    assert re.search(rf"^{image_worker}: ends at \d+ s, \d+ s in \d+ groups$", summary,
                     re.M), summary
    assert re.search(r"^ +\d+ s  docker  \(\d+-\d+\)$", summary, re.M), summary


@pytest.mark.parametrize("args", [[], ["-n", "0"]])
def test_outside_loadgroup_ids_are_left_alone(tmp_path, args):
    for name, text in TOY.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", *args,
                           "-p", "no:cacheprovider", "-o", "addopts="],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "test_mixed.py::test_served[container]\n" in proc.stdout
    assert "@" not in proc.stdout
