"""The package's layers point one way: no module imports one from a layer above it, there is no
import cycle (imports inside functions and TYPE_CHECKING blocks included), no package attribute
shadows a submodule, and the top level is lazy."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import qspos

ROOT = Path(qspos.__file__).parent
# bottom to top; a module may import from its own layer or any layer below
LAYERS = {"qspos._version": 0, "qspos.errors": 0, "qspos.core": 1, "qspos.models": 2, "qspos.runtime": 3,
          "qspos.formats": 4, "qspos.results": 4, "qspos.stages": 5, "qspos.api": 6, "qspos.cli": 7,
          "qspos.__main__": 7}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _imports(module: str, path: Path, type_checking: bool = True) -> set[str]:
    """Every qspos module ``module`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up node.level - 1 packages from this one
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n == "qspos" or n.startswith("qspos."))
    return out - {module}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module != "qspos":
            _layer(module)


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for module, path in MODULES.items():
        if module == "qspos":
            continue
        for target in _imports(module, path):
            if target != "qspos" and _layer(target) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not upward, "\n".join(upward)


def test_the_top_level_imports_nothing_but_its_version_at_run_time():
    assert _imports("qspos", MODULES["qspos"], type_checking=False) == {"qspos._version"}
    assert all("qspos" not in _imports(m, p) for m, p in MODULES.items() if m != "qspos")  # nor is it a hub


def test_no_import_cycles():
    graph = {m: {t for t in _imports(m, p) if t in MODULES} for m, p in MODULES.items() if m != "qspos"}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_quant_kernels_knows_nothing_of_qspos():
    kernels = Path(importlib.import_module("quant_kernels").__file__).parent
    for path in kernels.rglob("*.py"):
        assert not _imports(f"quant_kernels.{path.stem}", path), path


def test_every_subpackage_says_what_lives_there():
    for module, path in MODULES.items():
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), module


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"))
def test_no_package_attribute_shadows_a_submodule(package):
    pkg = importlib.import_module(package)
    subs = [info.name for info in pkgutil.iter_modules(pkg.__path__) if info.name != "__main__"]
    names = set(getattr(pkg, "__all__", [])) | {n for n in dir(pkg) if not n.startswith("__")}
    for sub in subs:
        module = importlib.import_module(f"{package}.{sub}")
        assert sub not in getattr(pkg, "__all__", []), f"{package}.__all__ names its submodule {sub}"
        if sub in names:
            assert getattr(pkg, sub) is module, f"{package}.{sub} is not the submodule {package}.{sub}"


def test_the_lazy_names_resolve_to_what_all_lists():
    assert sorted(qspos.__all__) == sorted(["__version__", *qspos._EXPORTS])
    for name in qspos._EXPORTS:
        assert getattr(qspos, name) is getattr(importlib.import_module(qspos._EXPORTS[name]), name)
    with pytest.raises(AttributeError):
        qspos.no_such_name  # noqa: B018


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_qspos_and_the_help_load_no_torch():
    out = _fresh("import sys, qspos\n"
                 "from qspos.cli import build_parser\n"
                 "build_parser().format_help()\n"
                 "heavy = [m for m in ('torch', 'brevitas', 'numpy', 'rich') if m in sys.modules]\n"
                 "assert not heavy, heavy")
    assert out.returncode == 0, out.stderr


def test_version_and_bad_arguments():
    out = subprocess.run([sys.executable, "-m", "qspos", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"qspos {qspos.__version__}"
    out = subprocess.run([sys.executable, "-m", "qspos", "trian"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid choice: 'trian'" in out.stderr
