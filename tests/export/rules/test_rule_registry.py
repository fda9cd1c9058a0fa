"""The rule registry: installed packages add rules through an entry point; rules are selected by name."""

from __future__ import annotations

import onnx
import pytest

from vitdeploy.cli import main
from vitdeploy.errors import VitDeployError
from vitdeploy.export.rewrite import rewrite_onnx
from vitdeploy.export.rules import RULES, RewriteRule

EXTRA_RULE = "mark_topk"
EXTRA_RULE_SOURCE = '''
from vitdeploy.export.rules import Match, RewriteRule


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
def extra_rule(install_plugin):
    """A rule from an installed third-party package."""
    install_plugin({"mark_plugin.py": EXTRA_RULE_SOURCE}, {"vitdeploy.rewrite_rules": {EXTRA_RULE: "mark_plugin:MarkTopK"}})
    return EXTRA_RULE


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def test_an_installed_rule_registers(extra_rule):
    assert list(RULES.items()) == ["argsort_slice_to_topk", extra_rule]
    assert isinstance(RULES.get(extra_rule), RewriteRule)


def test_only_the_selected_rules_run(extra_rule, topk_slice_model, tmp_path):
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    report = rewrite_onnx(src, tmp_path / "out.onnx", rule_names=[extra_rule])
    assert report.rules == [extra_rule]
    assert report.applied == [{"rule": extra_rule, "node": "sort", "op": "TopK"}]
    assert not report.audit.passed  # argsort_slice_to_topk did not run, so the full sort stays


def test_selection_keeps_the_given_order_without_repeats(extra_rule, topk_slice_model, tmp_path):
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    names = [extra_rule, "argsort_slice_to_topk", extra_rule]
    assert rewrite_onnx(src, tmp_path / "out.onnx", rule_names=names).rules == [extra_rule, "argsort_slice_to_topk"]


def test_unknown_rule_name_is_a_user_error(topk_slice_model, tmp_path):
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    with pytest.raises(VitDeployError, match="unknown rewrite rule 'nope'; choose one of argsort_slice_to_topk"):
        rewrite_onnx(src, tmp_path / "out.onnx", rule_names=["argsort_slice_to_topk", "nope"])
    assert not (tmp_path / "out.onnx").exists()


def test_cli_unknown_rule_is_one_line_and_writes_nothing(topk_slice_model, tmp_path, capsys):
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    assert main(["rewrite", src, "--out", str(out), "--rules", "argsort_slice_to_topk,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitdeploy: error: unknown rewrite rule 'nope'") and err.count("\n") == 1
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
