"""The pruning-method registry: a method is one folder (or module), and `vitdeploy prune` builds its
subcommand and options from the method's settings dataclass."""

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_model
from vitdeploy.cli import build_parser, main
from vitdeploy.errors import VitDeployError
from vitdeploy.models.checkpoint import load_artifact, save_artifact
import vitdeploy.prune.methods
from vitdeploy.prune import registry

METHOD_MODULE = '''
from dataclasses import dataclass

from vitdeploy.errors import VitDeployError
from vitdeploy.prune.registry import PruneMethod


@dataclass
class HalfConfig:
    blocks: tuple[int, ...] | None = None
    rate: float = 0.5
    package: bool = True

    def validate(self):
        if not 0 < self.rate < 1:
            raise VitDeployError("--rate must be in (0, 1)")
        return self


def run(model, config, context):
    from vitdeploy.models.token_plan import apply_keep_plan

    blocks = config.blocks or (1,)
    plan = ",".join(f"{b}:{config.rate}" for b in blocks)
    return apply_keep_plan(model, plan, package=config.package), {"method": "half", "plan": plan}


METHOD = (PruneMethod(name="half", help="keep a share of the tokens after some blocks",
                     description="A test method.", config=HalfConfig,
                     options={"blocks": "blocks", "rate": "share kept", "package": "package token"},
                     run=run, summary=lambda report, out: f"{report['plan']} -> {out}"))
'''


@pytest.fixture
def half_method(install_plugin):
    """A method from an installed third-party package, found through its entry point."""
    return install_plugin({"half_plugin/__init__.py": METHOD_MODULE},
                          {"vitdeploy.prune_methods": {"half": "half_plugin:METHOD"}})


def test_an_installed_method_package_is_a_prune_subcommand(half_method, tmp_path):
    """The whole path a third-party package takes, in a fresh interpreter: ``vitdeploy prune --help``
    lists it, and ``vitdeploy prune half`` runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(half_method), os.environ.get("PYTHONPATH", "")])}

    def vitdeploy(*args):
        return subprocess.run([sys.executable, "-m", "vitdeploy.cli", *args], capture_output=True, text=True, env=env)

    listing = vitdeploy("prune", "--help")
    assert listing.returncode == 0 and "keep a share of the tokens after some blocks" in listing.stdout
    artifact, out = tmp_path / "tiny", tmp_path / "pruned"
    save_artifact(tiny_model(), artifact)
    run = vitdeploy("prune", "half", str(artifact), "--out", str(out), "--blocks", "3", "--quiet")
    assert run.returncode == 0, run.stderr
    assert load_artifact(out).spec.blocks[2].tokens.keep == 8


def test_every_shipped_method_is_registered_with_a_working_config():
    shipped = registry.METHODS.items()
    assert {"patch-slimming", "star", "a-star", "uniform", "cls-attn", "random", "nvit", "sparse24",
            "spvit"} <= set(shipped)
    for method in shipped.values():
        fields = {f.name for f in dataclasses.fields(method.config)}
        assert set(method.options) <= fields, method.name
        assert set(method.fixed) <= fields and set(method.defaults) <= fields, method.name


def test_a_new_method_module_gets_a_subcommand_with_typed_options(half_method, tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["prune", "half", "m", "--out", "o", "--blocks", "1,2", "--rate", "0.25", "--no-package"])
    assert (args.blocks, args.rate, args.package) == ((1, 2), 0.25, False)
    artifact, out = tmp_path / "tiny", tmp_path / "pruned"
    save_artifact(tiny_model(), artifact)
    assert main(["prune", "half", str(artifact), "--out", str(out), "--blocks", "2", "--quiet"]) == 0
    assert "2:0.5 ->" in capsys.readouterr().out
    assert load_artifact(out).spec.blocks[1].tokens.keep == 8


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return exc.code


@pytest.mark.parametrize("args, message", [
    (["--rate", "nan"], "not a finite number"),
    (["--rate", "1.5"], "--rate must be in (0, 1)"),
    (["--blocks", "1,x"], "comma-separated whole numbers"),
    (["--rate", "0.5", "--colour", "red"], "unrecognized arguments: --colour"),
])
def test_a_new_methods_bad_settings_are_one_line_errors(half_method, tmp_path, capsys, args, message):
    assert exit_code(["prune", "half", "m", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("vitdeploy: error:")
    assert not (tmp_path / "o").exists()


def test_unknown_methods_are_user_errors():
    with pytest.raises(VitDeployError, match="unknown pruning method 'magic'"):
        registry.METHODS.get("magic")


def test_a_method_registered_twice_is_refused():
    star = registry.METHODS.items()["star"]
    registry.METHODS.register(star)  # the same object again: nothing changes
    with pytest.raises(ValueError, match="two pruning methods are named 'star'"):
        registry.METHODS.register(dataclasses.replace(star, help="another"))


def test_no_method_imports_another_method():
    methods = Path(vitdeploy.prune.methods.__file__).parent
    units = {path.name: list(path.rglob("*.py")) for path in methods.iterdir() if (path / "__init__.py").is_file()}
    units.update({path.stem: [path] for path in methods.glob("[!_]*.py")})
    assert {"nvit", "spvit", "star", "tome", "sparse24"} <= set(units)
    for name, sources in units.items():
        for source in sources:
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitdeploy.prune.methods."):
                    other = node.module.split(".")[3]
                    assert other in (name, "_tokens"), f"{source.relative_to(methods)} imports {node.module}"
