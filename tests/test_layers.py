"""The package's layering (docs/architecture.md): no module imports from a layer above its own."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitdeploy"
LAYERS = {
    "errors": 1, "schema": 1, "tables": 1, "io": 1, "threads": 1, "hardware": 1, "runtime": 1,
    "tokens": 2, "data": 2,
    "models": 3,
    "export": 4,
    "backends": 5, "evaluate": 5,
    "bench": 6, "train": 6, "lut": 6, "report": 6,
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
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("vitdeploy.")}


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
