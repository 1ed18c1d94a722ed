"""The layers of docs/design.md, checked on the source: every `import` and `from ... import` of every
file in src/stablelab (inside functions too), read with `ast`, points down or within its own package.

Bottom to top; a module may import stablelab modules of lower layers and of its own package only:
  L0 errors, io, config (standard library only)
  L1 signals, nn, data, optim, store, sweep, logs
  L2 models, monitor, continual, analysis
  L3 report
  L4 run
  L5 studies, bench, integrations, diagnosis
  L6 cli, __main__, and the package __init__ (lazy attribute access only)
Within a layer: config may import errors and io; __main__ may import cli.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "stablelab"

LAYERS: dict[str, int] = {
    "errors": 0, "io": 0, "config": 0,
    "signals": 1, "nn": 1, "data": 1, "optim": 1, "store": 1, "sweep": 1, "logs": 1,
    "models": 2, "monitor": 2, "continual": 2, "analysis": 2,
    "report": 3,
    "run": 4,
    "studies": 5, "bench": 5, "integrations": 5, "diagnosis": 5,
    "cli": 6, "__main__": 6, "": 6,  # "" is the package itself (stablelab/__init__.py)
    "proxy": 6,  # stablelab.proxy: the Python API of the proxy study (re-exports studies.proxy_api)
}
STDLIB_ONLY = {"errors", "io", "config"}
# Within a layer, units are beside each other and may not import each other, except: config builds
# on errors and io (which import no stablelab module), and __main__ only calls cli.main.
WITHIN_LAYER: dict[str, set[str]] = {"config": {"errors", "io"}, "__main__": {"cli"}}

# Imports against the layers in files this change does not own (being rewritten by others as this
# is written). Each entry is (importing module, imported module). The test fails on any violation
# not listed here AND on a listed one that no longer exists, so the list stays accurate.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str:
    """The layer unit of a stablelab module: its top-level package or module ("" for stablelab)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_package(module: str) -> bool:
    return (SRC / module.replace(".", "/") / "__init__.py").exists()


def _exists(module: str) -> bool:
    path = SRC / module.replace(".", "/")
    return (path / "__init__.py").exists() or path.with_suffix(".py").exists()


def imports_of(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """Every module (absolute name) that the file imports, with its line, anywhere in the file.
    module: the file's module name (default: from its path under src/)."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..store import y
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("stablelab") and _is_package(target):
                # `from stablelab.monitor import core` imports the submodule stablelab.monitor.core
                subs = [f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")]
                if len(subs) == len(node.names):
                    found += [(sub, node.lineno) for sub in subs]
                    continue
            found.append((target, node.lineno))
    return found


def _stablelab_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_violations() -> dict[tuple[str, str], str]:
    """(importing module, imported module) -> where and why, for every import against the layers."""
    stdlib = set(sys.stdlib_module_names)
    violations: dict[tuple[str, str], str] = {}
    for path in _stablelab_files():
        importer = _module_name(path)
        unit = _unit(importer)
        assert unit in LAYERS, f"{path}: package {unit!r} has no layer in docs/design.md"
        for target, line in imports_of(path):
            where = f"{path.relative_to(SRC)}:{line}"
            top = target.split(".")[0]
            if top != "stablelab":
                if unit in STDLIB_ONLY and top not in stdlib:
                    violations[(importer, target)] = f"{where}: layer 0 imports a non-stdlib module"
                continue
            if importer == "stablelab":
                continue  # checked by test_package_init_imports_lazily
            other = _unit(target)
            if other == unit and other != "":
                continue  # its own package
            if other in WITHIN_LAYER.get(unit, set()):
                continue
            if other not in LAYERS:
                violations[(importer, target)] = f"{where}: {target} is in no layer"
            elif LAYERS[other] >= LAYERS[unit]:
                violations[(importer, target)] = (
                    f"{where}: L{LAYERS[unit]} {unit} imports L{LAYERS[other]} {other or 'stablelab'}")
    return violations


def test_every_import_points_down_or_within_its_package():
    found = layer_violations()
    new = {key: why for key, why in found.items() if key not in KNOWN_VIOLATIONS}
    gone = KNOWN_VIOLATIONS - set(found)
    assert not new, "imports against the layers of docs/design.md:\n" + "\n".join(sorted(new.values()))
    assert not gone, f"KNOWN_VIOLATIONS lists imports that no longer exist (remove them): {sorted(gone)}"


def test_package_init_imports_lazily():
    # stablelab/__init__.py: stablelab imports only inside functions (module __getattr__)
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not top_level, "stablelab/__init__.py imports at module level: " + ", ".join(
        ast.unparse(node) for node in top_level)


def test_the_checker_reads_imports_inside_functions_and_relative_ones(tmp_path):
    fake = tmp_path / "fake.py"  # read as if it were stablelab/report/fake.py
    fake.write_text("from ..store import run_store\nfrom . import html\n"
                    "def f():\n    from stablelab.run import proxy_run\n    import stablelab.cli\n")
    names = sorted(name for name, _line in imports_of(fake, module="stablelab.report.fake"))
    assert names == ["stablelab.cli", "stablelab.report.html", "stablelab.run.proxy_run",
                     "stablelab.store.run_store"]
    sample = PACKAGE / "report" / "html.py"
    names = {name for name, _line in imports_of(sample)}
    assert "stablelab.io" in names
    monitor_files = {name for path in (PACKAGE / "monitor").glob("*.py") for name, _ in imports_of(path)}
    assert "stablelab.store.run_store" in monitor_files  # imported inside LogFolder when it writes Parquet
    assert not any(name.startswith("stablelab.models") for name in monitor_files)


def _imported_modules(code: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                            capture_output=True, text=True, check=True)
    # stderr: "import time: self [us] | cumulative | imported package", one line per module
    names = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return names


@pytest.mark.parametrize("module", ["stablelab", "stablelab.io", "stablelab.errors", "stablelab.config"])
def test_light_modules_do_not_import_torch(module):
    names = _imported_modules(f"import {module}")
    assert module.split(".")[-1] in {n.split(".")[-1] for n in names}
    assert not [n for n in names if n == "torch" or n.startswith("torch.")]


def test_no_source_file_over_400_lines():
    # docs/design.md: a module past 400 lines is split into modules named for what they hold
    long = {str(p.relative_to(SRC)): n for p in _stablelab_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"source files over 400 lines: {long}"
