"""Keeps library start-up noise out of a command's default output; ``DARKPOSE_DEBUG=1`` shows it all.

On a CPU-only machine TensorFlow logs, from C++ before absl's logging is initialised (so
``TF_CPP_MIN_LOG_LEVEL`` does not reach it), an absl pre-init warning, oneDNN and CUDA-stub INFO lines
and a red ``E0000 ... failed call to cuInit: ... CUDA error`` line; TFX's input resolution warns that ML
Metadata's ``property_predicate`` is not supported, and ML Metadata that its ZetaSQL ``filter_query`` is
gone. None of it concerns the run, and a newcomer reads the ``E`` line as a failure.

:func:`install` filters the process's standard error at the file-descriptor level (fd 2), so lines
written by C++ libraries, Python's ``warnings``/``logging`` and child processes that inherit fd 2 all
pass through one line filter: a line matching :data:`NOISE` is dropped, every other line is written
unchanged, in order. TensorFlow's multi-line deprecation notices (about TF1 APIs that TFX, TFMA and
tf2onnx call) are dropped as whole records from the ``tensorflow`` / ``absl`` loggers. Nothing is filtered when ``DARKPOSE_DEBUG`` is set to a non-empty value other
than ``0``.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings
from typing import Optional, Pattern, Tuple

DEBUG_ENV = "DARKPOSE_DEBUG"

_ABSL_CPP = r"^[IWEF]\d{4} \S+\s+\d+ [\w.\-/]+:\d+\] "
"""absl / glog C++ line prefix: severity, MMDD, time, thread id, file:line]."""

NOISE: Tuple[Pattern[str], ...] = (
    # absl, before InitializeLog: says that the lines below go to stderr.
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    # INFO lines of TensorFlow's C++ start-up (oneDNN notice, CUDA stub, CPU feature guard, ...).
    re.compile(_ABSL_CPP.replace("[IWEF]", "I")),
    # The second line of TensorFlow's CPU feature guard INFO message (the first has the INFO prefix).
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
    # CUDA probing on a machine without a GPU or its drivers.
    re.compile(_ABSL_CPP + r".*(cuInit|cuda drivers|CUDA error|Unable to register cu(DNN|FFT|BLAS) factory"
               r"|computation placer already registered|TF-TRT Warning)"),
    # TFX input resolution / ML Metadata: features of MLMD this pipeline does not use.
    re.compile(r"(ContextQuery|ArtifactQuery)\.property_predicate is not supported"),
    re.compile(r"filter_query (has been removed|is not supported).*ZetaSQL|ZetaSQL dependency removed"),
    # TFX 1.21 on the Pusher's custom executor (components/tfx_components.py keeps TFX's own Pusher
    # component with its inputs and CheckBlessing, and swaps only the executor, which is what this
    # deprecated argument is for; TFX's suggested alternative is a whole custom component).
    re.compile(r"`custom_executor_spec` is deprecated"),
    # TFMA's note on TF 2.x, printed at every Evaluator start.
    re.compile(r"Note that TFMA support for TF 2\.0 is currently in beta"),
    # TensorFlow C++: a CPU without AVX-512 falls back to Eigen for boolean ops (logged at ERROR level).
    re.compile(_ABSL_CPP + r"oneDNN supports DT_BOOL only on platforms with AVX-512"),
    # The LiteRT converter's C++ side (int8 calibration) and interpreter start-up.
    re.compile(r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$"),
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
)
"""Lines dropped from standard error (each pattern searched anywhere in the line)."""

DEPRECATION_MESSAGE = re.compile(r" is deprecated and will be removed in a future version")
"""TensorFlow's deprecation notices (one log record of several lines: the call, ``Instructions for
updating:`` and the advice), about TF1 APIs that TFX, TFMA and tf2onnx call themselves."""

_state: dict = {}


class _LibraryNotices(logging.Filter):
    """Drops, from the ``tensorflow`` and ``absl`` loggers, the records :data:`NOISE` or
    :data:`DEPRECATION_MESSAGE` match (whole multi-line records, which the line filter cannot see as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (DEPRECATION_MESSAGE.search(message) or is_noise(message.split("\n", 1)[0]))


def is_noise(line: str) -> bool:
    """Whether one line of standard error (without its newline) is library noise (:data:`NOISE`)."""
    return any(pattern.search(line) for pattern in NOISE)


def debug_enabled() -> bool:
    """``DARKPOSE_DEBUG`` is set to something other than empty or ``0``."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


_ABSL_ANYWHERE = re.compile(_ABSL_CPP[1:])
_SEGMENT = re.compile(rb"[^\r\n]*[\r\n]")


def filter_segment(segment: str) -> str | None:
    """One segment of standard error (text up to a ``\\n`` or ``\\r``, without it) after the filter.

    Returns None for a noise segment; the part before a noise line that a library wrote right after
    text without a line end (a progress bar's ``\\r`` update) is kept, without the noise; any other
    segment is returned unchanged.
    """
    if is_noise(segment):
        return None
    match = _ABSL_ANYWHERE.search(segment)
    if match and match.start() > 0 and is_noise(segment[match.start():]):
        return segment[:match.start()]
    return segment


def _pump(read_fd: int, write_fd: int) -> None:
    """Copies ``read_fd`` to ``write_fd`` segment by segment (``\\n`` and ``\\r`` both end one, so progress
    bars stay live), dropping noise (:func:`filter_segment`)."""
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            pending += chunk
            out, end = [], 0
            for match in _SEGMENT.finditer(pending):
                end = match.end()
                text = match.group()[:-1].decode("utf-8", "replace")
                kept = filter_segment(text)
                if kept is None:
                    continue
                # A segment cut short (noise after a progress bar) keeps no line end: the end was the noise's.
                out.append(match.group() if kept == text else kept.encode("utf-8"))
            pending = pending[end:]
            if out:
                os.write(write_fd, b"".join(out))
    if pending:
        kept = filter_segment(pending.decode("utf-8", "replace"))
        if kept:
            os.write(write_fd, kept.encode("utf-8"))


def install() -> bool:
    """Filters this process's fd 2 through :func:`is_noise` until exit; idempotent.

    Call it first thing in an entry point (before TensorFlow or TFX are imported). The original
    standard error is restored at exit, after the filter has written everything it received.

    Returns:
        True when the filter is (now) active, False under ``DARKPOSE_DEBUG`` or where fd 2 is closed.
    """
    if _state:
        return True
    if debug_enabled():
        return False
    # Python warnings print the caller's source line under the message: drop both at the source.
    warnings.filterwarnings("ignore", message=r".*filter_query has been removed.*ZetaSQL")
    notices = _LibraryNotices()
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).addFilter(notices)
    try:
        original = os.dup(2)
    except OSError:
        return False
    read_fd, write_fd = os.pipe()
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_pump, args=(read_fd, original), name="stderr-filter", daemon=True)
    thread.start()
    _state.update(original=original, thread=thread)
    atexit.register(uninstall)
    return True


def uninstall(timeout: Optional[float] = 5.0) -> None:
    """Stops filtering: flushes, restores the original fd 2 and waits for the filter to drain."""
    if not _state:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    original, thread = _state.pop("original"), _state.pop("thread")
    os.dup2(original, 2)   # closes the pipe's last write end held as fd 2: the pump sees end of file
    thread.join(timeout)
    os.close(original)
