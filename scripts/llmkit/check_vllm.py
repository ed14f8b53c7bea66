"""`make check-vllm`: each supported vLLM release, checked from its published wheel against
the kit's boundary to vLLM (runtime/vllm_api.py), without installing it or a GPU.

For each release in vllm_api.SUPPORTED it downloads the wheel (`pip download --no-deps`,
kept in a cache folder), reads its Python sources with `ast`, and checks:
* every touchpoint: a module that defines the name at one of its places, the leading
  parameters the kit passes, and the members the kit uses on a class;
* the kit's pinned dependencies against the release's own requirements (a GPU image
  installs both);
* every vLLM setting the kit's docs name (vllm_api.DOCUMENTED_ENGINE_SETTINGS) is still a
  `vllm serve` flag.
One line per release; exit 1 if any fails.

    python -m llmkit.check_vllm [--release 0.34.0 ...] [--wheel-dir DIR]
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

from llmkit.paths import REPO_ROOT
from llmkit.runtime.vllm_api import DOCUMENTED_ENGINE_SETTINGS, SUPPORTED, TOUCHPOINTS

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmkit" / "vllm-wheels"
# The dataclasses whose fields are `vllm serve`'s flags (engine, then OpenAI layer).
FLAG_CLASSES = (("vllm.engine.arg_utils", "AsyncEngineArgs"),
                ("vllm.entrypoints.common.cli_args", "FrontendArgs"),
                ("vllm.entrypoints.launchers.cli_args", "FrontendArgs"))


def wheel(release, folder=CACHE) -> Path:
    """The release's wheel, downloaded once into ``folder``."""
    found = sorted(Path(folder).glob(f"vllm-{release}-*.whl"))
    if not found:
        print(f"  downloading vllm {release} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--dest", str(folder), f"vllm=={release}"],
                       check=True)
        found = sorted(Path(folder).glob(f"vllm-{release}-*.whl"))
    return found[0]


class Sources:
    """A wheel's Python modules, parsed on demand."""

    def __init__(self, path):
        self.zip = zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())
        self._trees = {}
        self.packages = set()  # modules that are a package's __init__.py

    def tree(self, module):
        if module not in self._trees:
            base = module.replace(".", "/")
            for name in (f"{base}.py", f"{base}/__init__.py"):
                if name in self.names:
                    self._trees[module] = ast.parse(self.zip.read(name))
                    if name.endswith("__init__.py"):
                        self.packages.add(module)
                    break
            else:
                self._trees[module] = None
        return self._trees[module]

    def definition(self, module, name, depth=0):
        """(module, the node defining ``name`` at its top level), following re-exports."""
        tree = self.tree(module)
        if tree is None or depth > 4:
            return None
        for node in _top_level(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and node.name == name:
                return module, node
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return module, node
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
                return module, node
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        source = _absolute(module, node, module in self.packages)
                        found = self.definition(source, alias.name, depth + 1)
                        return found or (module, node)
        for node in tree.body:  # a lazy name: `def __getattr__(name): if name == "x"`
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__" and any(
                    isinstance(c, ast.Constant) and c.value == name for c in ast.walk(node)):
                return module, node
        return None

    def members(self, module, cls, depth=0):
        """Every name a class defines or assigns on self, with its bases' in the wheel."""
        names = set()
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in ("self", "cls") and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for base in cls.bases:
            if isinstance(base, ast.Name) and depth < 4:
                found = self.definition(module, base.id)
                if found and isinstance(found[1], ast.ClassDef):
                    names |= self.members(found[0], found[1], depth + 1)
        return names


def _top_level(tree):
    """Module-level statements, into if/try blocks (TYPE_CHECKING, fallbacks)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop(0)
        if isinstance(node, (ast.If, ast.Try)):
            stack[:0] = [*node.body, *getattr(node, "orelse", []),
                         *(s for h in getattr(node, "handlers", []) for s in h.body)]
        else:
            yield node


def _absolute(module, node, is_package):
    """The module a `from ... import` names, relative imports made absolute."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(parts + ([node.module] if node.module else []))


def parameters(node):
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef)
                     and n.name == "__init__"), None)
        return parameters(init)[1:] if init else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    return [a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]]


def check_touchpoint(sources, touchpoint):
    """None if the release has the touchpoint as the kit uses it, else what is wrong."""
    for place in touchpoint.places:
        module, name = place.split(":")
        found = sources.definition(module, name)
        if found is None:
            continue
        where, node = found
        if touchpoint.params:
            have = parameters(node)
            if have is not None and have[: len(touchpoint.params)] != list(touchpoint.params):
                return (f"{place} takes ({', '.join(have)}), the kit passes "
                        f"({', '.join(touchpoint.params)})")
        if touchpoint.members and isinstance(node, ast.ClassDef):
            missing = [m for m in touchpoint.members if m not in sources.members(where, node)]
            if missing:
                return f"{place} has no {', '.join(missing)}"
        return None
    return f"{touchpoint.name} is at none of {', '.join(touchpoint.places)}"


def flags(sources):
    """`vllm serve`'s flags as the kit's variables (EngineArgs and FrontendArgs fields)."""
    names = set()
    for module, cls in FLAG_CLASSES:
        found = sources.definition(module, cls)
        if found and isinstance(found[1], ast.ClassDef):
            names |= {m.upper() for m in sources.members(*found) if not m.startswith("_")}
    return names


def pin_conflicts(sources, pyproject=REPO_ROOT / "pyproject.toml"):
    """The kit's pins that the release's own requirements refuse: in a GPU image, pip
    would have to change vLLM's dependencies, or the kit's, to install both."""
    from packaging.requirements import Requirement

    pins = {}
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        pins[canonical(requirement.name)] = next(iter(requirement.specifier)).version
    metadata = next(n for n in sources.names if n.endswith(".dist-info/METADATA"))
    conflicts = []
    for line in sources.zip.read(metadata).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        marker = requirement.marker
        if marker is not None and not marker.evaluate({"extra": "", "python_version": "3.12",
                                                       "sys_platform": "linux",
                                                       "platform_machine": "x86_64"}):
            continue
        pinned = pins.get(canonical(requirement.name))
        if pinned and not requirement.specifier.contains(pinned, prereleases=True):
            conflicts.append(f"{requirement.name}=={pinned} (vLLM wants "
                             f"{requirement.specifier})")
    return conflicts


def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")


def check_release(release, folder=CACHE):
    """(ok, one line) for one release."""
    sources = Sources(wheel(release, folder))
    problems = [p for p in (check_touchpoint(sources, t) for t in TOUCHPOINTS) if p]
    conflicts = pin_conflicts(sources)
    if conflicts:
        problems.append(f"the kit's pins conflict with vLLM's: {', '.join(conflicts)}")
    known = flags(sources)
    gone = [name for name in DOCUMENTED_ENGINE_SETTINGS if name not in known]
    if gone:
        problems.append(f"no vllm serve flag for the documented {', '.join(gone)}")
    summary = (f"{len(TOUCHPOINTS)} touchpoints, {len(DOCUMENTED_ENGINE_SETTINGS)} documented "
               f"settings of {len(known)} flags")
    if problems:
        return False, f"vllm {release}: FAIL ({summary}): " + "; ".join(problems)
    return True, f"vllm {release}: ok ({summary})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", action="append", help="a release (default: all supported)")
    parser.add_argument("--wheel-dir", type=Path, default=CACHE)
    args = parser.parse_args(argv)
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    results = [check_release(r, args.wheel_dir) for r in args.release or SUPPORTED]
    for _, line in results:
        print(line, flush=True)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
