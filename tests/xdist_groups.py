"""What each of `make test`'s two pytest-xdist workers runs (``--dist loadgroup``).

A group runs whole on one worker, in collection order:
* every Docker build and container (the ``image`` marker) is one group, started first: the
  image is built once, and only one worker waits on builds while the other runs the host's
  modules, which leave one of the 2 cores idle much of the time (an engine start is three
  single-threaded imports of torch and vLLM);
* each other module is a group of its own, so its fixtures (engines, endpoints) start once.
"""

from __future__ import annotations

IMAGE_GROUP = "docker"


def group(item) -> str:
    if item.get_closest_marker("image"):
        return IMAGE_GROUP
    return item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")


def assign(config, items) -> None:
    """Called from conftest's ``pytest_collection_modifyitems``; a no-op outside xdist."""
    if not config.getoption("loadgroup", False):  # set in each worker of --dist loadgroup
        return
    items.sort(key=lambda item: group(item) != IMAGE_GROUP)  # stable: groups keep their order
    for item in items:
        _join(item, group(item))


def _join(item, name: str) -> None:
    """What ``@pytest.mark.xdist_group(name)`` means to do: xdist's scheduler groups tests by
    the ``@name`` suffix of their ids. pytest-xdist 3.8.0 writes that suffix to
    ``item._nodeid``, which pytest 9 no longer reads (a node's id is ``item._id``), so its
    mark groups nothing. tests/test_xdist_groups.py checks that this does."""
    item._id = type(item._id).parse(f"{item.nodeid}@{name}")
