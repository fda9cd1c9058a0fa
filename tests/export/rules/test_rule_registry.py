"""The rule registry: a module dropped into vitdeploy.export.rules registers; rules are selected by name."""

from __future__ import annotations

import sys

import onnx
import pytest

from vitdeploy.cli import main
from vitdeploy.errors import VitDeployError
from vitdeploy.export import rules
from vitdeploy.export.rewrite import rewrite_onnx
from vitdeploy.export.rules import RewriteRule, available_rules, register, select_rules

EXTRA_RULE = "mark_topk"
EXTRA_RULE_SOURCE = '''
from vitdeploy.export.rules import Match, RewriteRule, register


@register
class MarkTopK(RewriteRule):
    name = "mark_topk"
    description = "reports every TopK, changes nothing"

    def match(self, graph):
        return [Match(graph, node) for node in graph.nodes if node.op == "TopK"]

    def check(self, match):
        return None

    def apply(self, graph, match):
        return {"op": match.node.op}
'''


@pytest.fixture
def extra_rule(tmp_path, monkeypatch):
    """A rule module in a folder added to the rules package's path, as if dropped into the package."""
    folder = tmp_path / "extra_rules"
    folder.mkdir()
    (folder / f"{EXTRA_RULE}.py").write_text(EXTRA_RULE_SOURCE)
    monkeypatch.setattr(rules, "__path__", [*rules.__path__, str(folder)])
    monkeypatch.setattr(rules, "_REGISTRY", dict(rules._REGISTRY))
    yield EXTRA_RULE
    sys.modules.pop(f"{rules.__name__}.{EXTRA_RULE}", None)
    if hasattr(rules, EXTRA_RULE):
        delattr(rules, EXTRA_RULE)


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def test_a_module_dropped_into_the_package_registers(extra_rule):
    assert extra_rule not in rules._REGISTRY  # the premise: nothing imported it yet
    assert list(available_rules()) == ["argsort_slice_to_topk", extra_rule]
    assert [rule.name for rule in select_rules()] == ["argsort_slice_to_topk", extra_rule]


def test_only_the_selected_rules_run(extra_rule, topk_slice_model, tmp_path):
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    report = rewrite_onnx(src, tmp_path / "out.onnx", rule_names=[extra_rule])
    assert report.rules == [extra_rule]
    assert report.applied == [{"rule": extra_rule, "node": "sort", "op": "TopK"}]
    assert not report.audit.passed  # argsort_slice_to_topk did not run, so the full sort stays


def test_selection_keeps_the_given_order_without_repeats(extra_rule):
    names = [extra_rule, "argsort_slice_to_topk", extra_rule]
    assert [rule.name for rule in select_rules(names)] == [extra_rule, "argsort_slice_to_topk"]


def test_two_rules_with_one_name_are_refused(monkeypatch):
    monkeypatch.setattr(rules, "_REGISTRY", dict(rules._REGISTRY))

    class Again(RewriteRule):
        name = "argsort_slice_to_topk"
        description = "a second rule under a taken name"
        match = check = apply = None

    with pytest.raises(ValueError, match="two rewrite rules are named 'argsort_slice_to_topk'"):
        register(Again)


def test_unknown_rule_name_is_a_user_error():
    with pytest.raises(VitDeployError, match="unknown rewrite rule\\(s\\) 'nope'; available: argsort_slice_to_topk"):
        select_rules(["argsort_slice_to_topk", "nope"])


def test_cli_unknown_rule_is_one_line_and_writes_nothing(topk_slice_model, tmp_path, capsys):
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    assert main(["rewrite", src, "--out", str(out), "--rules", "argsort_slice_to_topk,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitdeploy: error: unknown rewrite rule(s) 'nope'") and err.count("\n") == 1
    assert not out.exists()


def test_cli_rules_option_applies_only_those(topk_slice_model, tmp_path, capsys):
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    assert main(["rewrite", src, "--out", str(tmp_path / "out.onnx"), "--rules", "argsort_slice_to_topk"]) == 0
    assert "1 rewrite(s) applied, audit passed" in capsys.readouterr().out


def test_cli_help_lists_every_rule(extra_rule, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["rewrite", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert exit_info.value.code == 0
    assert "argsort_slice_to_topk: a" in out and f"{extra_rule}: reports every TopK" in out
