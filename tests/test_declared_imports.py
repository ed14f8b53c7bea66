"""Every third-party module the tests and benchmarks import is pinned in pyproject.toml, so a
clean `make install` has it (a package that only arrives as another's dependency can vanish)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import pytest

from llmkit.paths import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")


def imported_modules(path) -> set[str]:
    """Top-level names of the modules a file imports, at any depth, and importorskip()s."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value.split(".")[0])
    return names


def is_local(name: str) -> bool:
    return any(p.exists() for p in (REPO_ROOT / "tests" / f"{name}.py",
                                    REPO_ROOT / "bench" / f"{name}.py",
                                    REPO_ROOT / "scripts" / name, REPO_ROOT / name))


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> dict[str, str]:
    """Distribution name -> its requirement, from dependencies and every extra."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"],
                    *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {normalise(re.split(r"[=<>!~\[; ]", r, maxsplit=1)[0]): r for r in requirements}


def test_every_third_party_import_of_the_tests_and_benchmarks_is_pinned():
    files = sorted([*(REPO_ROOT / "tests").glob("*.py"), *(REPO_ROOT / "bench").glob("*.py")])
    modules = set().union(*map(imported_modules, files))
    third_party = sorted(m for m in modules
                         if m not in sys.stdlib_module_names and not is_local(m))
    distributions = importlib.metadata.packages_distributions()
    pins = pinned()
    problems = []
    for module in third_party:
        names = [normalise(d) for d in distributions.get(module, [])]
        found = [pins[n] for n in names if n in pins]
        if not found:
            problems.append(f"{module} (from {', '.join(names) or 'no installed package'}) "
                            "is not in pyproject.toml")
        elif not any("==" in r for r in found):
            problems.append(f"{module}: {found[0]} is not pinned with ==")
    assert "yaml" in third_party and "pytest" in third_party  # the scan sees them
    assert not problems, "\n".join(problems)
