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


@pytest.mark.parametrize("thresholds", ["    AP: {max_drop: 0.01}\n", ""])
def test_gate_without_a_value_threshold_is_refused_before_any_work(tmp_path, capsys, thresholds):
    """Issue 22: max_drop alone (or nothing) can never bless a first model, so nothing would ever be pushed."""
    config = tmp_path / "gate.yaml"
    config.write_text("dataset: coco\neval:\n  batch_size: 8\n" + (f"  thresholds:\n{thresholds}" if thresholds else ""))
    code = gate.main(["--candidate", str(tmp_path / "model"), "--eval-data", str(tmp_path), "--config", str(config)])
    error = capsys.readouterr().err.strip()
    assert code == gate.EXIT_ERROR and len(error.splitlines()) == 1
    assert f"{config}: eval.thresholds" in error and "value threshold" in error


@pytest.mark.parametrize("name", ["coco_gate.yaml", "mpii_gate.yaml"])
def test_shipped_gate_configs_are_valid(name):
    from components import tfma_metrics
    from pose.config import load_config

    config = load_config(os.path.join(ROOT, "configs", "eval", name))
    assert tfma_metrics.validate_thresholds(config["eval"]["thresholds"], config["dataset"])


# --------------------------------------------------------------------------
# Interop (issue 12): files written by others, and every error path exits 2 naming file and entry
# --------------------------------------------------------------------------

def _interop(shared_data, *parts):
    return os.path.join(shared_data, "interop_cases", *parts)


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_score_cli_string_image_ids_as_subprocess(shared_data):
    completed = _run("pipeline.score", "--coco-gt", _interop(shared_data, "coco_scoring", "gt_785.json"),
                     "--results", _interop(shared_data, "coco_scoring", "res_string_image_id.json"))
    assert completed.returncode == 0, completed.stderr
    stats = _last_json(completed.stdout)
    assert stats["AP"] == 1.0 and stats["AP_M"] == -1.0
    assert "converted to int" in completed.stdout


def test_score_coco_no_area_and_empty_results(shared_data, capsys):
    assert score.main(["--coco-gt", _interop(shared_data, "coco_scoring", "gt_785_no_area.json"),
                       "--results", _interop(shared_data, "coco_scoring", "res_785.json")]) == 0
    out = capsys.readouterr().out
    assert _last_json(out)["AP"] == 1.0
    assert "note: 1 ground-truth annotations" in out and "0.53 * bbox w * h" in out
    assert score.main(["--coco-gt", _interop(shared_data, "coco_scoring", "gt_785.json"),
                       "--results", _interop(shared_data, "coco_scoring", "res_empty.json")]) == 0
    stats = _last_json(capsys.readouterr().out)
    assert stats["AP"] == 0.0 and stats["AP_M"] == -1.0 and stats["AR_M"] == -1.0


def test_score_mpii_hrnet_pred_mat_is_one_based(shared_data, tmp_path, capsys):
    from scipy.io import loadmat, savemat

    gt = _interop(shared_data, "mpii_hrnet_pred_mat", "gt_valid_300rows.mat")
    preds = _interop(shared_data, "mpii_hrnet_pred_mat", "hrnet_pred.mat")
    assert score.main(["--mpii-gt", gt, "--preds", preds]) == 0
    stats = _last_json(capsys.readouterr().out)
    right = (81.4728, 25.3968, 9.0451, 15.3462)  # interop_cases/mpii_hrnet_pred_mat/README
    assert (stats["Mean"], stats["Mean@0.1"], stats["Hip@0.1"], stats["Ankle@0.1"]) == right
    zero_based = str(tmp_path / "pred0.mat")
    savemat(zero_based, {"preds": loadmat(preds)["preds"] - 1.0})
    assert score.main(["--mpii-gt", gt, "--preds", zero_based, "--preds-index-base", "0"]) == 0
    assert _last_json(capsys.readouterr().out) == stats
    assert score.main(["--mpii-gt", gt, "--preds", zero_based]) == 0  # read as 1-based: shifted by -1 px
    assert _last_json(capsys.readouterr().out)["Mean@0.1"] != stats["Mean@0.1"]


def test_score_errors_exit_2_naming_file_and_entry(shared_data, tmp_path, capsys):
    gt = _interop(shared_data, "coco_scoring", "gt_785.json")
    good = json.load(open(_interop(shared_data, "coco_scoring", "res_785.json")))
    cases = {
        "unknown_image.json": ([good[0], dict(good[1], image_id=1)], "entry 1: image_id 1 is not in the ground truth"),
        "nan_score.json": ([dict(good[0], score=float("nan"))], "entry 0: score nan"),
        "short.json": ([dict(good[0], keypoints=good[0]["keypoints"][:-3])], "entry 0: keypoints must be a list of 51"),
        "no_score.json": ([{k: v for k, v in good[0].items() if k != "score"}], "entry 0: missing 'score'"),
        "not_json.json": ("[{", "not valid JSON"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        assert score.main(["--coco-gt", gt, "--results", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert str(path) in err and message in err, (name, err)
    bad_gt = tmp_path / "gt_bad.json"
    dataset = json.load(open(gt))
    dataset["annotations"][0]["image_id"] = "seven"
    bad_gt.write_text(json.dumps(dataset))
    good_results = _interop(shared_data, "coco_scoring", "res_785.json")
    assert score.main(["--coco-gt", str(bad_gt), "--results", good_results]) == 2
    err = capsys.readouterr().err
    assert str(bad_gt) in err and "annotations[0]" in err and "'seven'" in err
    not_mat = tmp_path / "pred.mat"
    not_mat.write_text("not a mat")
    assert score.main(["--mpii-gt", _interop(shared_data, "mpii_hrnet_pred_mat", "gt_valid_300rows.mat"),
                       "--preds", str(not_mat)]) == 2
    assert f"{not_mat}: not a readable .mat file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: exit 2 naming the flag
        score.main(["--mpii-gt", _interop(shared_data, "mpii_hrnet_pred_mat", "gt_valid_300rows.mat"),
                    "--preds", _interop(shared_data, "mpii_hrnet_pred_mat", "gt_valid_300rows.mat"),
                    "--preds-index-base", "2"])
    assert exited.value.code == 2 and "--preds-index-base" in capsys.readouterr().err


def test_score_library_exception_exits_2_naming_the_files(shared_data, monkeypatch, capsys):
    from components import metrics_coco

    def broken(*args, **kwargs):
        raise AssertionError("Results do not correspond to current coco set")

    monkeypatch.setattr(metrics_coco, "evaluate_results", broken)
    gt = _interop(shared_data, "coco_scoring", "gt_785.json")
    results = _interop(shared_data, "coco_scoring", "res_785.json")
    assert score.main(["--coco-gt", gt, "--results", results]) == 2
    err = capsys.readouterr().err
    assert gt in err and results in err and "AssertionError" in err


def test_gate_bad_gt_annotations_exit_2_naming_file_and_entry(shared_data, tmp_path):
    dataset = json.load(open(_interop(shared_data, "coco_scoring", "gt_785_no_area.json")))
    del dataset["annotations"][0]["bbox"]  # no area and no box: nothing to derive the OKS area from
    bad_gt = tmp_path / "gt.json"
    bad_gt.write_text(json.dumps(dataset))
    config = _write_config(tmp_path / "eval.yaml", {"AP": {"lower_bound": 0.5}})
    completed = _run("pipeline.gate", "--candidate", str(tmp_path / "no_model"), "--eval-data", str(tmp_path),
                     "--config", config, "--gt-annotations", str(bad_gt))
    assert completed.returncode == 2
    assert "gate error" in completed.stderr and str(bad_gt) in completed.stderr
    assert "annotations[0]" in completed.stderr and "Traceback" not in completed.stderr
