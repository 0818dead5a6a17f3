"""pipeline/stages.py and pipeline/run_summary.py without kfp: stage records, errors, the index."""
import json
import os

import pytest

from pipeline import run_summary, stages


def test_run_stage_records_summary_and_errors(tmp_path):
    output = str(tmp_path / "pipeline-root" / "trainer" / "model")
    summary = stages.run_stage("trainer", output, {"examples": "/x", "config": {"big": 1}},
                               lambda: {"steps": 3, "final_loss": 0.5})
    assert summary["result"] == {"steps": 3, "final_loss": 0.5} and summary["wall_s"] >= 0
    assert "config" not in summary["inputs"]
    assert stages.read_summary(output)["stage"] == "trainer"

    failing = str(tmp_path / "pipeline-root" / "evaluator" / "blessing")

    def body():
        raise KeyError("AP")

    with pytest.raises(stages.StageError, match=r"stage 'evaluator' failed \(KeyError: 'AP'\); inputs: model=/m"):
        stages.run_stage("evaluator", failing, {"model": "/m", "gt_annotations": ""}, body)
    with open(os.path.join(failing, stages.STAGE_ERROR)) as handle:
        error = json.load(handle)
    assert error["stage"] == "evaluator" and "KeyError" in error["traceback"]


def test_check_inputs_names_stage_and_input(tmp_path):
    stages.check_inputs("trainer", {"examples": str(tmp_path), "optional": ""})
    with pytest.raises(stages.StageError, match="stage 'trainer': input examples/Split-train not found"):
        stages.check_inputs("trainer", {"examples/Split-train": str(tmp_path / "Split-train")})


def test_collect_index_and_summary(tmp_path):
    root = tmp_path / "darkpose-tf-2026"
    stages.run_stage("example_gen", str(root / "example-gen" / "examples"), {},
                     lambda: {"splits": {"train": 30, "eval": 9}, "skipped": {"no_keypoints": 2}})
    stages.run_stage("trainer", str(root / "trainer" / "model"), {}, lambda: {"steps": 4, "final_loss": 0.01})
    stages.run_stage("evaluator", str(root / "evaluator" / "blessing"), {}, lambda: {
        "blessed": False, "metrics": {"AP": 0.41, "AP50": 0.8, "AR": 0.5},
        "baseline": "/serving/1", "baseline_metrics": {"AP": 0.45},
        "reasons": ["AP 0.4100 < lower_bound 0.8"]})
    collected = run_summary.collect(str(tmp_path))
    assert set(collected["stages"]) == {"example_gen", "trainer", "evaluator"} and not collected["errors"]
    index = run_summary.build_index(str(tmp_path), "r1", collected, {"stage_times": {"data": 1.5}, "total_s": 9.0})
    assert index["verdict"] == "NOT_BLESSED" and index["pushed_path"] is None
    assert list(index["stage_times_s"]) == ["data", "example_gen", "trainer", "evaluator"]
    assert index["records"]["splits"] == {"train": 30, "eval": 9}
    text = run_summary.format_summary(index)
    assert "records: train=30, eval=9" in text and "skipped: no_keypoints=2" in text
    assert "  AP         0.4100    0.4500" in text
    assert "blessing: NOT_BLESSED" in text and "AP 0.4100 < lower_bound 0.8" in text
    assert "pushed:   nothing pushed" in text
    run_summary.write_index(str(tmp_path), index)
    with open(tmp_path / "index.json") as handle:
        assert json.load(handle)["verdict"] == "NOT_BLESSED"
    assert "| evaluator | `darkpose-tf-2026/evaluator/blessing` |" in (tmp_path / "INDEX.md").read_text()


def test_failed_stage_in_index(tmp_path):
    with pytest.raises(stages.StageError):
        stages.run_stage("example_gen", str(tmp_path / "eg"), {"train_annotations": "/a.json"},
                         lambda: (_ for _ in ()).throw(ValueError("bad json")))
    index = run_summary.build_index(str(tmp_path), "r2", run_summary.collect(str(tmp_path)), {})
    assert index["verdict"] == "FAILED"
    assert "bad json" in index["errors"]["example_gen"] and "/a.json" in index["errors"]["example_gen"]
    assert "ERROR in stage example_gen" in run_summary.format_summary(index)


def test_beam_args_and_pushed_path():
    assert stages.beam_args_list(["--a=1", 2]) == ["--a=1", "2"]
    assert stages.beam_args_list('["--runner=DirectRunner"]') == ["--runner=DirectRunner"]
    assert stages.beam_args_list(None) == []
    assert stages.pushed_path({"pushed": True, "path": "/serving/3"}) == "/serving/3"
    assert stages.pushed_path({"pushed": False}) == ""
