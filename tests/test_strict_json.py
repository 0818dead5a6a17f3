"""Every JSON file and JSON line the product writes is strict JSON (schemas/jsonio.py).

Checked always with :func:`schemas.jsonio.loads` (Python's parser with
``NaN``/``Infinity`` rejected) and with the parsers nobody here wrote that are
installed: node's ``JSON.parse`` and Perl's ``json_pp`` (strict), and ``jq``
(parses, but jq 1.6 reads a bare ``NaN`` as null, so it cannot prove a file
NaN-free). The inputs carry non-finite numbers on purpose: the shared
``interop_cases/degenerate_boxes`` detections (a NaN box, a NaN score) and
NaN metrics handed to the writers.
"""
import ast
import glob
import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

from components import blessing, example_gen, pusher
from pipeline import run_summary, synthetic
from schemas import jsonio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")


NODE_CHECK = ("const fs = require('fs'); const text = fs.readFileSync(process.argv[1], 'utf8');"
              "const docs = process.argv[2] === 'lines' ? text.split('\\n').filter(l => l.trim()) : [text];"
              "docs.forEach(d => JSON.parse(d)); console.log(docs.length);")


def _outside_parsers():
    """JSON parsers nobody here wrote that are installed: {name: executable}.

    node's ``JSON.parse`` and Perl's JSON::PP (``json_pp``) reject ``NaN`` and
    ``Infinity``. ``jq`` is run too, but only shows that the files parse: jq 1.6
    reads a bare ``NaN`` as null, so it cannot prove a file NaN-free.
    """
    return {name: shutil.which(name) for name in ("node", "json_pp", "jq") if shutil.which(name)}


def _run_parser(name, executable, path, lines):
    if name == "node":
        return subprocess.run([executable, "-e", NODE_CHECK, path, "lines" if lines else "doc"],
                              capture_output=True, text=True, timeout=60)
    if name == "jq":
        return subprocess.run([executable, "-c", ".", path], capture_output=True, text=True, timeout=60)
    with open(path, encoding="utf-8") as handle:   # json_pp reads one document from stdin
        text = handle.read()
    documents = [line for line in text.splitlines() if line.strip()] if lines else [text]
    result = None
    for document in documents:
        result = subprocess.run([executable], input=document, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            break
    return result


def _strict(path):
    """Parses a .json or .jsonl file strictly (schemas.jsonio.loads, and every outside parser installed)."""
    lines = path.endswith(".jsonl")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    values = [jsonio.loads(line) for line in text.splitlines() if line.strip()] if lines else [jsonio.loads(text)]
    for name, executable in _outside_parsers().items():
        result = _run_parser(name, executable, path, lines)
        assert result is None or result.returncode == 0, f"{name} rejects {path}: {result.stderr}"
    return values


def test_outside_parsers_are_strict(tmp_path):
    """The strict outside parsers used here reject NaN/Infinity; a visible skip when none is installed
    (then only schemas.jsonio.loads checked the files)."""
    strict = {name: path for name, path in _outside_parsers().items() if name != "jq"}
    if not strict:
        pytest.skip("neither node nor json_pp installed: files were parsed with schemas.jsonio.loads only")
    path = str(tmp_path / "bad.json")
    for text in ('{"a": NaN}', "[Infinity]", '{"a": -Infinity}'):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        for name, executable in strict.items():
            assert _run_parser(name, executable, path, False).returncode != 0, (name, text)


# --------------------------------------------------------------------------
# The helper
# --------------------------------------------------------------------------

def test_to_strict_and_dumps():
    value = {"a": NAN, "b": [INF, -INF, 1.5], "c": np.float32("nan"), "d": np.array([1.0, np.nan]),
             "e": (np.int64(3), np.bool_(True)), "f": -1.0}
    assert json.loads(jsonio.dumps(value, sort_keys=True)) == {
        "a": None, "b": [None, None, 1.5], "c": None, "d": [1.0, None], "e": [3, True], "f": -1.0}
    # int keys sort numerically, as json.dumps sorts them; a NaN key becomes "NaN"
    assert jsonio.dumps({10: 1, 2: 2, np.int64(1): 3}, sort_keys=True) == '{"1": 3, "2": 2, "10": 1}'
    assert jsonio.dumps({NAN: 1}) == '{"NaN": 1}'
    assert jsonio.to_strict(value, nonfinite="string")["b"] == ["Infinity", "-Infinity", 1.5]
    assert jsonio.dumps({"x": object()}, default=lambda _: NAN) == '{"x": null}'
    with pytest.raises(TypeError):
        jsonio.dumps({"x": object()})
    with pytest.raises(ValueError):
        jsonio.dumps({}, nonfinite="nan")
    for token in ("NaN", "Infinity", "-Infinity", '{"a": NaN}'):
        with pytest.raises(ValueError):
            jsonio.loads(token)
    assert jsonio.loads('{"a": -1}') == {"a": -1}   # pycocotools' -1 is a number


def test_write_is_strict_and_all_or_nothing(tmp_path):
    path = str(tmp_path / "out.json")
    jsonio.write(path, {"AP": np.float64("nan"), "n": np.int32(3)}, indent=2)
    assert _strict(path) == [{"AP": None, "n": 3}]
    with pytest.raises(TypeError):
        jsonio.write(str(tmp_path / "bad.json"), {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_no_writer_bypasses_the_helper():
    """No json.dump/json.dumps call in product code outside schemas/jsonio.py (a hash input aside)."""
    allowed = {("components/example_gen.py", "_content_hash")}
    offenders = []
    files = [os.path.join(ROOT, "pipeline.py")]
    for package in ("components", "pipeline", "trainer", "pose", "schemas", "toolkit"):
        files += glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)
    for path in files:
        relative = os.path.relpath(path, ROOT)
        if relative == os.path.join("schemas", "jsonio.py"):
            continue
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        scopes = {}  # call node -> name of the innermost enclosing function
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    scopes[inner] = node.name  # inner functions are walked later and overwrite
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("dump", "dumps") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "json"):
                name = scopes.get(node, "<module>")
                if (relative, name) not in allowed:
                    offenders.append(f"{relative}:{node.lineno} in {name}")
    assert not sorted(set(offenders)), offenders


# --------------------------------------------------------------------------
# Writers, fed NaN
# --------------------------------------------------------------------------

def test_writers_write_strict_json_from_nan_values(tmp_path):
    metrics = {"AP": NAN, "AR": np.float32("inf"), "AP_M": -1.0}

    blessing_dir = str(tmp_path / "blessing")
    blessing.write_blessing(blessing_dir, {"blessed": True, "metrics": metrics, "reasons": []})
    (record,) = _strict(os.path.join(blessing_dir, blessing.BLESSING_JSON))
    assert record["metrics"] == {"AP": None, "AR": None, "AP_M": -1.0}
    assert blessing.read_blessing(blessing_dir)["blessed"] is True

    model_dir = tmp_path / "model" / "Format-Serving"
    model_dir.mkdir(parents=True)
    (model_dir / "saved_model.pb").write_bytes(b"")
    pushed = pusher.run_pusher(str(tmp_path / "model"), blessing_dir, str(tmp_path / "serving"), "run-1",
                               metrics=metrics)
    (push_record,) = _strict(os.path.join(pushed["path"], pusher.PUSH_RECORD))
    assert push_record["metrics"]["AP"] is None and push_record["version"] == pushed["version"]

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_summary.write_index(str(run_dir), {"run_id": "r", "verdict": "BLESSED", "metrics": metrics,
                                           "stage_times_s": {"trainer": 1.0}, "total_s": NAN,
                                           "training": {"final_loss": NAN}, "outputs": {}, "run_dir": str(run_dir)})
    assert _strict(str(run_dir / run_summary.INDEX_JSON))[0]["metrics"]["AP"] is None
    assert (run_dir / run_summary.INDEX_MD).read_text().startswith("# Run r: BLESSED")

    synthetic._write_json(str(tmp_path / "synthetic.json"), {"bbox": [NAN, 1.0, 2.0, 3.0]})
    assert _strict(str(tmp_path / "synthetic.json")) == [{"bbox": [None, 1.0, 2.0, 3.0]}]


def test_dead_letters_keep_the_bad_value_as_a_string():
    line = example_gen._dumps({"reason": "invalid_box", "bbox": [NAN, 100.0, -INF, np.float64(80.0)]})
    assert jsonio.loads(line)["bbox"] == ["NaN", 100.0, "-Infinity", 80.0]


def test_evaluator_dead_letter_is_strict():
    from components import evaluator

    fn = evaluator.InferenceFn({}, "coco")
    tagged = fn._dead("inference_failed", f"score {NAN}")
    assert jsonio.loads(tagged.value) == {"reason": "inference_failed", "detail": "score nan"}


# --------------------------------------------------------------------------
# ExampleGen on the shared degenerate detections: every file it writes parses strictly
# --------------------------------------------------------------------------

def test_example_gen_outputs_are_strict_json_with_degenerate_boxes(shared_data, tmp_path):
    coco = os.path.join(shared_data, "coco_val2017_mmpose4")
    dets = os.path.join(shared_data, "interop_cases", "degenerate_boxes", "dets_degenerate.json")
    config = example_gen.default_config("coco", {"data": {"input_size": [64, 48], "heatmap_size": [16, 12],
                                                          "sigma": 1.0, "det_score_threshold": 0.0}})
    out = str(tmp_path / "out")
    manifest = example_gen.run_example_gen(
        "coco", out, config, eval_annotations=os.path.join(coco, "person_keypoints_val2017_mmpose4.json"),
        eval_images=os.path.join(coco, "images"), det_file=dets)
    written = sorted(glob.glob(os.path.join(out, "**", "*.json*"), recursive=True))
    assert [os.path.basename(path) for path in written] == ["dead_letter.jsonl", "manifest.json"]
    letters = _strict(os.path.join(out, example_gen.DEAD_LETTER))
    (parsed_manifest,) = _strict(os.path.join(out, "manifest.json"))
    assert parsed_manifest["skipped"] == manifest["skipped"]
    nan_box = [letter for letter in letters if letter.get("box_index") == 6]   # dets entry 9: [NaN, 100, 50, 80]
    assert nan_box and nan_box[0]["reason"] == "invalid_box" and nan_box[0]["bbox"] == ["NaN", 100.0, 50.0, 80.0]
    assert manifest["splits"] == {"eval": 2} and manifest["skipped"]["invalid_box"] == 4
    assert all(not isinstance(v, float) or math.isfinite(v) for v in parsed_manifest.values())
