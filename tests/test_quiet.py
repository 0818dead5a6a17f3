"""Library noise stays out of the default output (toolkit/quiet.py); DARKPOSE_DEBUG=1 shows it."""
import os
import subprocess
import sys

import pytest

from toolkit import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines a plain `make demo` printed on a CPU-only machine before the filter (TF 2.21, TFX 1.21, MLMD 1.21).
NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796472320.564802   11104 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796472320.565548   11104 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "E0000 00:00:1796472325.516379   11104 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "WARNING:absl:ArtifactQuery.property_predicate is not supported.",
    "W1205 12:01:02.000000 140 channel_resolver.py:63] ContextQuery.property_predicate is not supported.",
    "WARNING:absl:`custom_executor_spec` is deprecated. Please customize component directly.",
]
KEPT_LINES = [
    "pipeline: component Trainer failed: ValueError: bad config",
    "E1205 12:00:00.000000  77 example_gen.py:12] image 7 unreadable",   # an error that is not CUDA probing
    "Traceback (most recent call last):",
]
NOISE_LINES.append("To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
                   "with the appropriate compiler flags.")


def test_deprecation_notices_are_dropped_as_whole_records():
    import logging

    notices = quiet._LibraryNotices()

    def record(message):
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    assert not notices.filter(record(
        "From tf_loader.py:164: convert_variables_to_constants (from tensorflow.python.framework."
        "convert_to_constants) is deprecated and will be removed in a future version.\nInstructions for updating:\n"
        "This API was designed for TensorFlow v1."))
    assert not notices.filter(record("Tensorflow version (2.21.0) found. Note that TFMA support for TF 2.0 is "
                                     "currently in beta"))
    assert notices.filter(record("Trainer: loss is NaN at step 40"))


def test_a_noise_line_written_after_a_progress_bar_keeps_the_bar():
    bar = "predict:   0%|          | 0/4 [00:00<?, ? images/s]"
    assert quiet.filter_segment(bar + NOISE_LINES[3]) == bar
    assert quiet.filter_segment(bar) == bar
    assert quiet.filter_segment(NOISE_LINES[3]) is None


def test_noise_patterns():
    assert all(quiet.is_noise(line) for line in NOISE_LINES)
    assert not any(quiet.is_noise(line) for line in KEPT_LINES)


SCRIPT = """
import os, subprocess, sys
sys.path.insert(0, {root!r})
from toolkit import quiet
print("active" if quiet.install() else "inactive", flush=True)
lines = {lines!r}
for line in lines:
    os.write(2, (line + "\\n").encode())            # C++-style writes to fd 2
print("python stderr line", file=sys.stderr)
os.write(2, b"\\rbar 1/2" + {bar_noise!r} + b"\\n\\rbar 2/2\\n")   # a progress bar with a C++ line after it
subprocess.run([sys.executable, "-c", {child!r}])   # a child inheriting fd 2
"""


def _run(env_debug):
    env = dict(os.environ)
    env.pop(quiet.DEBUG_ENV, None)
    if env_debug:
        env[quiet.DEBUG_ENV] = "1"
    child = "import os; os.write(2, %r)" % (NOISE_LINES[3] + "\nchild ok\n").encode()
    script = SCRIPT.format(root=ROOT, lines=NOISE_LINES + KEPT_LINES, child=child, bar_noise=NOISE_LINES[3].encode())
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=60)
    # bytes decoded by hand: text mode would turn the progress bar's \r into line ends
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_filter_drops_noise_keeps_the_rest_in_order():
    result = _run(env_debug=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "active"
    assert result.stderr.split("\n") == KEPT_LINES + ["python stderr line", "\rbar 1/2\rbar 2/2", "child ok", ""]


def test_debug_shows_everything():
    result = _run(env_debug=True)
    assert result.stdout.strip() == "inactive"
    lines = result.stderr.splitlines()
    assert lines[:len(NOISE_LINES)] == NOISE_LINES and "child ok" in lines and lines.count(NOISE_LINES[3]) == 2


@pytest.mark.slow
def test_tensorflow_start_up_is_silent_under_the_filter():
    """A real TensorFlow import and op on this CPU-only machine prints nothing to stderr once filtered."""
    script = ("import sys; sys.path.insert(0, %r); from toolkit import quiet; quiet.install(); "
              "import tensorflow as tf; print(float(tf.reduce_sum(tf.ones(3))))" % ROOT)
    env = {k: v for k, v in os.environ.items() if k not in (quiet.DEBUG_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3.0"
    assert result.stderr == "", result.stderr


def test_a_script_run_cli_is_filtered_a_called_main_is_not():
    """cli.run filters a command run as a script (its main lives in __main__), not a main called from code."""
    script = ("import os, sys; sys.path.insert(0, %r)\n"
              "from toolkit import cli, quiet\n"
              "def main():\n"
              "    os.write(2, %r)\n"
              "    print('filtered' if quiet._state else 'unfiltered', flush=True)\n"
              "sys.exit(cli.run(main, prog='tool'))\n") % (ROOT, (NOISE_LINES[3] + "\nkept\n").encode())
    env = {k: v for k, v in os.environ.items() if k != quiet.DEBUG_ENV}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "filtered"
    assert result.stderr.splitlines() == ["kept"]
    assert not quiet._state   # this test process (a main called from code) was never filtered
