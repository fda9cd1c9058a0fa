import subprocess
import sys

import pytest
import torch

from vitdeploy.models.spec import ViTSpec, uniform_blocks
from vitdeploy.models.vit import ViT


def tiny_spec(**overrides) -> ViTSpec:
    """A 4-block ViT on 32×32 inputs with 16 patch tokens: fast enough for every test."""
    fields = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, num_classes=5,
                  blocks=uniform_blocks(4, 32, 2), name="tiny")
    fields.update(overrides)
    return ViTSpec(**fields).validate()


def tiny_model(spec: ViTSpec | None = None, seed: int = 0) -> ViT:
    model = ViT(spec or tiny_spec())
    model.reset_parameters(seed)
    with torch.no_grad():  # larger weights than timm's init, so token scores differ clearly
        for p in model.parameters():
            p.mul_(3)
    return model.eval()


@pytest.fixture
def tiny():
    return tiny_model()


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real ``vitdeploy`` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "vitdeploy.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a third-party package for one test, as pip would: its modules under a folder on
    ``sys.path`` beside a ``.dist-info`` that declares its entry points. Every registry forgets the
    plug-in afterwards. Returns ``install(modules, entry_points)`` → the folder (for ``PYTHONPATH``):
    ``modules`` maps relative paths to source, ``entry_points`` maps groups to {name: "module:object"}."""
    site = tmp_path / "site-packages"
    installed = []

    def install(modules: dict[str, str], entry_points: dict[str, dict[str, str]]):
        for relative, source in modules.items():
            (site / relative).parent.mkdir(parents=True, exist_ok=True)
            (site / relative).write_text(source)
        installed.append(f"vitdeploy_test_plugin{len(installed)}")
        dist_info = site / f"{installed[-1]}-0.1.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {installed[-1]}\nVersion: 0.1\n")
        (dist_info / "entry_points.txt").write_text("".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
            for group, points in entry_points.items()))
        for registry in _all_registries():
            registry.names()  # built-in modules register once, on first import: before the copy below
            for attribute in ("_items", "_given"):
                monkeypatch.setattr(registry, attribute, dict(getattr(registry, attribute)))
            monkeypatch.setattr(registry, "_scanned", False)
        monkeypatch.syspath_prepend(str(site))
        return site

    yield install
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(site)):
            del sys.modules[name]


def _all_registries():
    from vitdeploy.backends import BACKENDS
    from vitdeploy.cli import COMMANDS
    from vitdeploy.export.rules import RULES
    from vitdeploy.models.architectures import ARCHITECTURES
    from vitdeploy.prune.registry import METHODS
    from vitdeploy.tokens.selectors import SELECTORS

    return BACKENDS, COMMANDS, RULES, ARCHITECTURES, METHODS, SELECTORS
