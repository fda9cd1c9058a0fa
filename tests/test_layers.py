"""The package's layering (docs/architecture.md): no module imports from a layer above its own, no
two top-level packages import each other, directly or round a cycle (within a layer too), and no
two modules do either (within a package too).

Every import counts: at module level or inside a function, absolute or relative, and
``from vitdeploy import X`` as an import of ``vitdeploy.X``."""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitdeploy"
LAYERS = {
    "errors": 1, "registry": 1, "schema": 1, "tables": 1, "io": 1, "threads": 1, "hardware": 1, "runtime": 1,
    "tokens": 2, "data": 2,
    "models": 3,
    "export": 4,
    "backends": 5, "evaluate": 5,
    "bench": 6, "train": 6, "lut": 6, "report": 6, "quantize": 6,
    "prune": 7,
    "serve": 8, "pipeline": 8, "optimize": 8,
    "cli": 9, "__main__": 9,
}


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside vitdeploy (its first component's)."""
    return LAYERS[module.split(".")[1]]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = absolute_module(path, node)
            names.update(f"{base}.{alias.name}" if base == "vitdeploy" else base for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("vitdeploy.")}


def absolute_module(path: Path, node: ast.ImportFrom) -> str:
    """The module an ``import from`` names, with a relative one resolved against ``path``'s package."""
    if node.level == 0:
        return node.module
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def module_name(path: Path) -> str:
    return ".".join(("vitdeploy", *path.relative_to(PACKAGE).with_suffix("").parts))


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_top_level_package_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = layer_of(module_name(path))
    upward = sorted(m for m in imported_modules(path) if m.split(".")[1] in LAYERS and layer_of(m) > own)
    assert not upward, f"{module_name(path)} (layer {own}) imports {upward}"


def test_imports_resolve_relative_and_package_level_forms():
    module = PACKAGE / "models" / "zoo.py"
    tree = ast.parse("from . import spec\nfrom ..export import onnx\nfrom vitdeploy import io\n")
    names = [absolute_module(module, node) for node in tree.body]
    assert names == ["vitdeploy.models", "vitdeploy.export", "vitdeploy"]


def top_level(module: str) -> str:
    return module.split(".")[1]


def test_no_cycle_between_top_level_packages():
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        own = top_level(module_name(path))
        graph.setdefault(own, set()).update(top_level(m) for m in imported_modules(path) if top_level(m) != own)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle between top-level packages: {' → '.join(error.args[1])}")


MODULE_NAMES = {module_name(path).removesuffix(".__init__"): path for path in MODULES}


def imported_vitdeploy_modules(path: Path) -> set[str]:
    """The modules (or packages) of vitdeploy that ``path`` imports: ``from package import module``
    counts as an import of that module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = absolute_module(path, node)
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULE_NAMES else base
                         for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names & MODULE_NAMES.keys()


def test_no_cycle_between_modules():
    graph = {name: imported_vitdeploy_modules(path) - {name} for name, path in MODULE_NAMES.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle between modules: {' → '.join(error.args[1])}")
