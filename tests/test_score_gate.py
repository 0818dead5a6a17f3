"""CLIs: `python -m pipeline.score` (COCO / MPII, last line JSON) and `python -m pipeline.gate` (exit 0/1/2)."""
import json
import os
import subprocess
import sys

import pytest

from pipeline import gate, score
from tests.evaluator_fixtures import export_fake_model, write_coco_eval_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)


def test_score_coco_cli_prints_table_and_expected_json(shared_data):
    directory = os.path.join(shared_data, "coco_val2017_mmpose4")
    completed = _run("pipeline.score", "--coco-gt", os.path.join(directory, "person_keypoints_val2017_mmpose4.json"),
                     "--results", os.path.join(directory, "example_keypoint_results.json"))
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    stats = json.loads(lines[-1])
    expected = json.load(open(os.path.join(directory, "expected_stats.json")))["example_keypoint_results.json"]
    assert stats["AP"] == expected["AP"] == 0.86089
    assert (stats["AP_M"], stats["AP_L"], stats["AR"]) == (expected["APm"], expected["APl"], expected["AR"])
    assert any(line.startswith("AP50") for line in lines)


def test_score_mpii_cli(shared_data):
    directory = os.path.join(shared_data, "mpii_val_pckh_dev")
    completed = _run("pipeline.score", "--mpii-gt", os.path.join(directory, "gt_valid_dev.mat"),
                     "--preds", os.path.join(directory, "gt_valid_dev.mat"))
    assert completed.returncode == 0, completed.stderr
    stats = json.loads(completed.stdout.strip().splitlines()[-1])
    expected = json.load(open(os.path.join(directory, "expected_pckh.json")))
    assert stats["Mean"] == pytest.approx(expected["tompson_pos_pred_src@0.5"]["Mean_weighted"], abs=0.01)
    assert stats["Mean@0.1"] == pytest.approx(expected["tompson_pos_pred_src@0.1"]["Mean_weighted"], abs=0.01)
    assert stats["Ankle"] == pytest.approx(expected["tompson_pos_pred_src@0.5"]["Ankle"], abs=0.01)
    assert "PCKh@0.5" in completed.stdout


def test_score_bad_input_exits_2(tmp_path, capsys):
    assert score.main(["--results", "x.json"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    assert score.main(["--coco-gt", str(bad), "--results", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err


def test_gate_error_exit_2_as_subprocess(tmp_path):
    completed = _run("pipeline.gate", "--candidate", str(tmp_path), "--eval-data", str(tmp_path),
                     "--config", str(tmp_path / "missing.yaml"))
    assert completed.returncode == 2
    assert "gate error" in completed.stderr


def _write_config(path, thresholds):
    lines = ["dataset: coco", "data:", "  input_size: [64, 48]", "eval:", "  batch_size: 8", "  thresholds:"]
    for metric, bounds in thresholds.items():
        lines.append(f"    {metric}: {{{', '.join(f'{k}: {v}' for k, v in bounds.items())}}}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.slow
def test_gate_blesses_first_then_rejects_a_worse_candidate_vs_auto_baseline(shared_data, tmp_path, capsys):
    from components import pusher

    directory = os.path.join(shared_data, "coco_val2017_mmpose4")
    write_coco_eval_records(os.path.join(directory, "person_keypoints_val2017_mmpose4.json"),
                            os.path.join(directory, "images"), str(tmp_path / "examples"))
    good = export_fake_model(str(tmp_path / "good"), noise_px=0.5)
    worse = export_fake_model(str(tmp_path / "worse"), noise_px=4.0)
    config = _write_config(tmp_path / "eval.yaml", {"AP": {"lower_bound": 0.5, "max_drop": 0.02}})
    destination = str(tmp_path / "serving")
    common = ["--eval-data", str(tmp_path / "examples"), "--config", config, "--baseline", "auto",
              "--push-destination", destination]
    first = gate.main(["--candidate", good, "--output-dir", str(tmp_path / "b1")] + common)
    out = capsys.readouterr().out
    assert first == gate.EXIT_BLESSED
    assert "SKIPPED (no baseline)" in out and "verdict: BLESSED" in out
    assert pusher.run_pusher(good, str(tmp_path / "b1"), destination, run_id="1")["version"] == 1
    second = gate.main(["--candidate", worse, "--output-dir", str(tmp_path / "b2")] + common)
    out = capsys.readouterr().out
    assert second == gate.EXIT_NOT_BLESSED
    assert "verdict: NOT_BLESSED" in out and "FAIL" in out
    assert json.loads(out.strip().splitlines()[-1])["blessed"] is False
    assert json.load(open(tmp_path / "b2" / "blessing.json"))["baseline"] == os.path.join(destination, "1")


@pytest.mark.parametrize("name", ["coco_gate.yaml", "mpii_gate.yaml"])
def test_shipped_gate_configs_are_valid(name):
    from components import tfma_metrics
    from pose.config import load_config

    config = load_config(os.path.join(ROOT, "configs", "eval", name))
    assert tfma_metrics.validate_thresholds(config["eval"]["thresholds"], config["dataset"])
