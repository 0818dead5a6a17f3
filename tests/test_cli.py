"""Command-line flags of every CLI (issue 12 section 5) and the exit-2 wrapper (toolkit/cli.py).

A flag that is neither the command's own nor a pipeline option recognised by
Beam's option parser stops the command before any work with exit status 2,
naming the flag and its close match; prefixes of flags are not accepted;
valid Beam flags pass through unchanged. Checked with Beam's own parser
(``PipelineOptions``) and with the real commands as subprocesses.
"""
import json
import os
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions, PipelineOptions, SetupOptions,
                                                  StandardOptions, DebugOptions)

from toolkit import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
ENV.pop(cli.DEBUG_ENV, None)

VALID_BEAM_FLAGS = [
    "--runner", "DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers", "2",
    "--project=my-project", "--region", "europe-west4", "--temp_location=gs://bucket/tmp",
    "--setup_file=./setup.py", "--experiments=use_runner_v2", "--experiments", "no_use_multiple_sdk_containers",
    "--save_main_session", "--no_use_public_ips", "--job_name=darkpose-1", "--staging_location", "gs://bucket/staging",
]


# --------------------------------------------------------------------------
# The parsing function (no subprocess)
# --------------------------------------------------------------------------

def test_valid_beam_flags_pass_through_unchanged_and_mean_what_beam_reads():
    assert cli.check_beam_flags(VALID_BEAM_FLAGS) == VALID_BEAM_FLAGS
    parsed = cli.parse_beam_flags(VALID_BEAM_FLAGS)
    # The same values as Beam's own PipelineOptions reads from the same flags.
    options = PipelineOptions(VALID_BEAM_FLAGS)
    assert parsed.runner == options.view_as(StandardOptions).runner == "DirectRunner"
    assert parsed.direct_num_workers == options.view_as(DirectOptions).direct_num_workers == 2
    assert parsed.project == options.view_as(GoogleCloudOptions).project == "my-project"
    assert parsed.region == options.view_as(GoogleCloudOptions).region == "europe-west4"
    assert parsed.save_main_session is options.view_as(SetupOptions).save_main_session is True
    assert parsed.experiments == options.view_as(DebugOptions).experiments == [
        "use_runner_v2", "no_use_multiple_sdk_containers"]
    assert cli.check_beam_flags([]) == []


@pytest.mark.parametrize("flags, named, suggestion", [
    (["--direct_num_worker", "2"], "--direct_num_worker", "--direct_num_workers"),   # prefix of a Beam flag
    (["--direct-num-workers=2"], "--direct-num-workers", "--direct_num_workers"),    # dashes for underscores
    (["--runer=DirectRunner"], "--runer", "--runner"),
    (["--tmp_location", "gs://b/t"], "--tmp_location", "--temp_location"),
    (["--num-shard", "2"], "--num-shard", "--num-shards"),                           # prefix of our flag
    (["--num_shards=2"], "--num_shards", "--num-shards"),
    (["--aproach", "x"], "--aproach", None),
])
def test_unknown_flags_are_named_with_their_close_match(flags, named, suggestion):
    with pytest.raises(cli.UsageError) as raised:
        cli.parse_beam_flags(flags, own_options=["--num-shards", "--out", "--dataset"])
    message = str(raised.value)
    assert named in message and "not a flag of this command nor a Beam pipeline option" in message
    if suggestion:
        assert f"{named} (did you mean {suggestion}?)" in message
    else:
        assert "did you mean" not in message
    # Beam on its own would only log "Unparseable argument" and go on with the default:
    assert PipelineOptions(flags).view_as(DirectOptions).direct_num_workers == 1


def test_every_unknown_flag_and_stray_argument_is_named():
    with pytest.raises(cli.UsageError) as raised:
        cli.parse_beam_flags(["--runner=DirectRunner", "--aproach", "x", "--num-shard=2", "stray"], ["--num-shards"])
    message = str(raised.value)
    assert "--aproach" in message and "--num-shard (did you mean --num-shards?)" in message
    assert "unexpected argument 'stray'" in message and "'x'" not in message


@pytest.mark.parametrize("flags, words", [
    (["--direct_num_workers=two"], ["--direct_num_workers", "two"]),
    (["--direct_running_mode=fast"], ["--direct_running_mode", "fast", "in_memory"]),
    (["--save_main_session=True"], ["--save_main_session"]),
])
def test_values_beam_rejects_are_usage_errors(flags, words):
    with pytest.raises(cli.UsageError) as raised:
        cli.parse_beam_flags(flags)
    assert all(word in str(raised.value) for word in words)


def test_close_match():
    candidates = ["--out", "--num-shards", "--runner", "--eval-annotations", "--eval-images", "--project"]
    assert cli.close_match("--num-shard", candidates) == "--num-shards"
    assert cli.close_match("--eval-annotation", candidates) == "--eval-annotations"
    assert cli.close_match("--outdir", candidates) == "--out"
    assert cli.close_match("--aproach", candidates) is None
    assert cli.close_match("--", candidates) is None


def test_no_flag_of_ours_shadows_a_beam_option(monkeypatch):
    """Our flags are consumed before Beam sees them: none of the Beam-running CLIs may also define a Beam option."""
    from components import example_gen
    from pipeline import gate, local_runner

    beam = set(cli.beam_option_strings())
    assert {"--runner", "--direct_num_workers", "--direct_running_mode", "--project", "--region",
            "--temp_location", "--setup_file", "--experiments", "--save_main_session"} <= beam
    seen = {}

    def capture(parser, args=None):
        seen[parser.prog] = set(parser.option_strings())
        raise SystemExit(0)

    monkeypatch.setattr(cli.ArgumentParser, "parse_args_and_beam_flags", capture)
    for main in (example_gen.main, gate.main):
        with pytest.raises(SystemExit):
            main([])
    seen["pipeline.py"] = set(local_runner.build_parser().option_strings())
    assert set(seen) == {"python -m components.example_gen", "python -m pipeline.gate", "pipeline.py"}
    for prog, ours in seen.items():
        assert "--out" in ours or "--candidate" in ours or "--runs-dir" in ours
        assert not (ours - {"--help"}) & beam, prog


# --------------------------------------------------------------------------
# Every CLI: prefixes and typos exit 2 with the close match (in process, before any work)
# --------------------------------------------------------------------------

# (module, argv with the mistyped flag, the flag, its suggestion); the required flags are left out on
# purpose in some rows: the unknown flag is reported first.
CLI_CASES = [
    ("components.example_gen", ["--dataset", "coco", "--eval-annotations", "a.json", "--eval-images", "i",
                                "--out", "{out}", "--num-shard", "2"], "--num-shard", "--num-shards"),
    ("components.example_gen", ["--dataset", "coco", "--out", "{out}", "--direct_num_worker", "2"],
     "--direct_num_worker", "--direct_num_workers"),
    ("components.example_gen", ["--dataset", "coco", "--eval-annotation", "a.json"],
     "--eval-annotation", "--eval-annotations"),
    ("pipeline.gate", ["--candidate", "m", "--eval-data", "e", "--config", "c.yaml", "--baseline_dir", "b"],
     "--baseline_dir", "--baseline"),
    ("pipeline.gate", ["--candidate", "m", "--eval-data", "e", "--config", "c.yaml", "--push-dest", "d"],
     "--push-dest", "--push-destination"),
    ("pipeline.local_runner", ["--runs-dir", "{out}", "--max-step", "3"], "--max-step", "--max-steps"),
    ("pipeline.local_runner", ["--runs-dir", "{out}", "--runer=DirectRunner"], "--runer", "--runner"),
    ("pipeline.score", ["--coco-gt", "g.json", "--result", "r.json"], "--result", "--results"),
    ("components.pusher", ["--model-dir", "m", "--blessing", "b", "--destination", "{out}", "--run", "1"],
     "--run", "--run-id"),
    ("components.preview", ["src", "--out", "{out}", "--column", "3"], "--column", "--columns"),
    ("trainer.task", ["--examples", "e", "--config", "c.yaml", "--model-dir", "{out}", "--max-step", "1"],
     "--max-step", "--max-steps"),
    ("trainer.flops", ["--config", "c.yaml", "--transpose", "input"], "--transpose", "--transposed"),
    ("pipeline.synthetic", ["--out", "{out}", "--train-image", "3"], "--train-image", "--train-images"),
    ("pipeline.predict", ["--model", "m", "--images", "i", "--out", "{out}", "--det-fil", "d.json"],
     "--det-fil", "--det-file"),
    ("trainer.lr_finder", ["--examples", "e", "--config", "c.yaml", "--out", "{out}", "--step", "5"],
     "--step", "--steps"),
]


@pytest.mark.parametrize("module_name, argv, typo, suggestion", CLI_CASES,
                         ids=[f"{case[0]}{case[2]}" for case in CLI_CASES])
def test_every_cli_rejects_a_mistyped_flag_with_exit_2(module_name, argv, typo, suggestion, tmp_path, capsys):
    import importlib

    out = str(tmp_path / "out")
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as raised:
        module.main([token.format(out=out) for token in argv])
    assert raised.value.code == 2
    message = capsys.readouterr().err
    assert f"{typo} (did you mean {suggestion}?)" in message, message
    assert not os.path.exists(out)


# --------------------------------------------------------------------------
# The exit-2 wrapper
# --------------------------------------------------------------------------

def _library_failure():
    import json as library

    return library.loads('{"area": 1')          # a JSONDecodeError raised inside the json package


def test_wrapper_turns_an_unhandled_exception_into_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run(_library_failure, prog="tool") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("tool: error: JSONDecodeError: ") and "json/decoder.py" in err
    assert "tests/test_cli.py" in err and "_library_failure" in err     # our frame above the library's
    assert "Traceback" not in err and f"{cli.DEBUG_ENV}=1" in err

    def missing_key():
        return {}["area"]

    assert cli.run(missing_key, prog="tool") == 2
    assert "KeyError: missing key 'area'" in capsys.readouterr().err

    def failed_assert():
        raise AssertionError()    # what a bare `assert` in a library (pycocotools' loadRes) raises

    assert cli.run(failed_assert, prog="tool") == 2
    assert "AssertionError (no message) (raised in tests/test_cli.py" in capsys.readouterr().err


def test_wrapper_keeps_exit_statuses_and_argparse_exits(capsys, monkeypatch):
    assert cli.run(lambda: 0) == 0 and cli.run(lambda: 1) == 1 and cli.run(lambda: 2) == 2
    assert cli.run(lambda: None) == 0

    def usage_error():
        cli.ArgumentParser(prog="tool").parse_args(["--nope"])

    with pytest.raises(SystemExit) as raised:
        cli.run(usage_error)
    assert raised.value.code == 2
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.run(_library_failure, prog="tool") == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "tool: error: JSONDecodeError" in err


def test_wrapper_names_the_file_of_an_os_error(capsys, tmp_path):
    missing = str(tmp_path / "nowhere" / "gt.json")
    assert cli.run(lambda: open(missing).read(), prog="tool") == 2
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err and missing in err


# --------------------------------------------------------------------------
# The real commands (subprocesses)
# --------------------------------------------------------------------------

def _run(args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_example_gen_stops_on_misspelt_flags_before_any_work(shared_data, tmp_path):
    coco = os.path.join(shared_data, "coco_val2017_mmpose4")
    out = tmp_path / "examples"
    completed = _run(["-m", "components.example_gen", "--dataset", "coco",
                      "--eval-annotations", os.path.join(coco, "person_keypoints_val2017_mmpose4.json"),
                      "--eval-images", os.path.join(coco, "images"), "--out", str(out),
                      "--num-shard", "2", "--aproach", "x", "--direct_num_worker", "2"])
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "--num-shard (did you mean --num-shards?)" in completed.stderr
    assert "--direct_num_worker (did you mean --direct_num_workers?)" in completed.stderr
    assert "--aproach" in completed.stderr
    assert not os.listdir(tmp_path), "nothing may be written before the flags are checked"


def test_example_gen_passes_valid_beam_flags_through(shared_data, tmp_path):
    coco = os.path.join(shared_data, "coco_val2017_mmpose4")
    out = tmp_path / "examples"
    completed = _run(["-m", "components.example_gen", "--dataset", "coco",
                      "--eval-annotations", os.path.join(coco, "person_keypoints_val2017_mmpose4.json"),
                      "--eval-images", os.path.join(coco, "images"), "--out", str(out), "--num-shards", "2",
                      "--runner", "DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers", "1",
                      "--experiments=darkpose_noop", "--experiments", "darkpose_noop_2"])
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["splits"]["eval"] > 0
    assert "Unparseable argument" not in completed.stderr and "Discarding" not in completed.stderr
    assert len(os.listdir(out / "Split-eval")) == 2


def test_pipeline_py_stops_on_a_misspelt_flag_before_any_work(tmp_path):
    runs = tmp_path / "runs"
    completed = _run(["pipeline.py", "--runner=DirectRunner", "--runs-dir", str(runs), "--max-step", "5",
                      "--direct_num_worker=2"])
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "--max-step (did you mean --max-steps?)" in completed.stderr
    assert "--direct_num_worker (did you mean --direct_num_workers?)" in completed.stderr
    assert not runs.exists()


def test_unhandled_library_error_exits_2_with_one_line(tmp_path):
    completed = _run(["-m", "trainer.flops", "--config", str(tmp_path / "missing.yaml")])
    assert completed.returncode == 2
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m trainer.flops: error: FileNotFoundError") and "missing.yaml" in last
    assert "Traceback" not in completed.stderr


def test_tfx_beam_executors_check_beam_flags_before_any_work(tmp_path):
    """A compiled spec submitted with edited beam_pipeline_args fails in the executor, naming the flag, before reading data."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from components import tfx_components

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=["--direct_num_worker=2"])
    with pytest.raises(cli.UsageError, match=r"--direct_num_worker \(did you mean --direct_num_workers\?\)"):
        tfx_components.PoseExampleGenExecutor(context).Do(
            {}, {"examples": [examples]},
            {"dataset": "coco", "config_json": "{}", "train_annotations": str(tmp_path / "missing.json")})
    assert not os.path.exists(tmp_path / "examples")
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=["--runer=DirectRunner"])
    with pytest.raises(cli.UsageError, match="--runer"):
        tfx_components.PoseEvaluatorExecutor(context).Do({}, {}, {"config_json": "{}"})
