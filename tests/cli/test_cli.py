"""The CLI end to end: user errors exit 2 with one line and leave no file behind."""

import json
import sys

import pytest
import torch

from vitdeploy.cli import main
from vitdeploy.models.checkpoint import save_artifact
from tests.conftest import run_cli, tiny_model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_artifact(tiny_model(), path)
    return path


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert {"inspect", "train", "eval", "export", "rewrite", "run"} <= listed


def test_inspect_json_reports_per_block_macs(artifact, capsys):
    assert main(["inspect", str(artifact), "--keep", "2:0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [b["tokens_in"] for b in report["blocks"]] == [17, 17, 9, 9]
    assert report["macs"] == sum(b["macs"] for b in report["blocks"]) + report["patch_embed_macs"] + report["head_macs"]


def test_export_writes_onnx_and_report(artifact, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(artifact), "--keep", "1:12,3:0.5", "--selection", "rank", "--out", str(out)]) == 0
    assert "op audit: passed" in capsys.readouterr().out
    report = json.loads((tmp_path / "m.export.json").read_text())
    assert report["audit"]["op_counts"].get("TopK") is None and report["parity"]["passed"]


def mismatched_checkpoint(tmp_path):
    state = tiny_model().state_dict()
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(3, 32)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("case", ["missing file", "mismatched checkpoint", "keep above tokens",
                                  "unknown model", "malformed keep", "package without keep"])
def test_user_errors_exit_2_with_one_line_and_no_output(case, artifact, tmp_path):
    model, keep = str(artifact), "2:8"
    if case == "missing file":
        model = str(tmp_path / "nope.pth")
    elif case == "mismatched checkpoint":
        model = str(mismatched_checkpoint(tmp_path))
    elif case == "keep above tokens":
        keep = "2:40"
    elif case == "unknown model":
        model = "deit_gigantic_patch16_224"
    elif case == "malformed keep":
        keep = "two:eight"
    out = tmp_path / "out.onnx"
    keep_args = ["--package"] if case == "package without keep" else ["--keep", keep]
    result = run_cli("export", model, *keep_args, "--out", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitdeploy: error: ")
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "out.export.json").exists()


def test_deit_small_export_with_three_token_steps(tmp_path):
    """The foundation's acceptance command: DeiT-S dropping tokens after blocks 4, 7 and 10."""
    out = tmp_path / "x.onnx"
    result = run_cli("export", "deit_small_patch16_224", "--keep", "4:0.7,7:0.7,10:0.7", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    topk = report["audit"]["topk"]
    assert [(t["k"], t["axis_length"]) for t in topk] == [(138, 196), (97, 138), (68, 97)]
    assert report["audit"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "x.export.json").read_text())["audit"] == report["audit"]


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="apt-get install dataset-fashion-mnist")
def test_eval_on_data_of_the_wrong_size_is_a_user_error(artifact):
    result = run_cli("eval", artifact, "--limit", "10")
    assert result.returncode == 2
    assert "pass --resize" in result.stderr and len(result.stderr.strip().splitlines()) == 1
