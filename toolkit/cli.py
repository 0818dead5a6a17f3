"""Command-line plumbing shared by every CLI: strict flag parsing and the exit-2 wrapper.

One place owns how our commands read their flags and how they fail:

- :class:`ArgumentParser` is ``argparse.ArgumentParser`` without prefix
  abbreviations (``--num-shard`` is *not* ``--num-shards``) whose unknown
  flags are an error naming each flag and its closest match.
- :meth:`ArgumentParser.parse_args_and_beam_flags` is for the commands that
  run Beam (ExampleGen, the gate/Evaluator, ``pipeline.py``): a flag that is
  not ours must be a pipeline option recognised by Beam's own option parser
  (the parser ``PipelineOptions.get_all_options`` builds over every
  ``PipelineOptions`` subclass, abbreviations off, as Beam does), otherwise the
  command stops before any work with exit status 2. Beam by itself only logs
  "Unparseable argument" and carries on with the default. Valid Beam flags
  (``--flag=value`` or ``--flag value``, booleans, repeated ``--experiments``)
  are returned unchanged, in their order.
- :func:`run` wraps a CLI ``main``: an exception nobody handled (a library
  assert, ``KeyError``, ``OSError``, a TensorFlow error) becomes one line on
  stderr naming its type, message and where it was raised, and exit status 2;
  ``DARKPOSE_DEBUG=1`` prints the traceback as well. Exit statuses that
  ``main`` returns (0 / 1 / 2) are passed through unchanged.

Exit status 2 is argparse's own status for a bad command line, and the
"error" status of the gate and ``pipeline.py``.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import traceback
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

EXIT_ERROR = 2
DEBUG_ENV = "DARKPOSE_DEBUG"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_MESSAGE = 800


class UsageError(ValueError):
    """A command line that names an unknown flag, a stray argument, or a bad Beam flag value."""


# --------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------

def _normalised(flag: str) -> str:
    return flag.lstrip("-").replace("_", "-").lower()


def close_match(flag: str, candidates: Iterable[str]) -> Optional[str]:
    """The known flag a mistyped ``flag`` most likely meant, or None.

    Names are compared without their dashes and with ``_`` read as ``-``.
    Order of preference: the same name (``--num_shards`` for ``--num-shards``),
    the one flag it is a prefix of (``--num-shard``), then the best
    ``difflib.get_close_matches`` (similarity ratio >= 0.6, ``--runer``).
    """
    by_name: dict = {}
    for candidate in sorted(set(candidates)):
        if candidate.startswith("--"):
            by_name.setdefault(_normalised(candidate), candidate)
    key = _normalised(flag)
    if not key:
        return None
    if key in by_name:
        return by_name[key]
    prefixed = [name for name in by_name if name.startswith(key)]
    if len(prefixed) == 1:
        return by_name[prefixed[0]]
    matches = difflib.get_close_matches(key, list(by_name), n=1)
    return by_name[matches[0]] if matches else None


def unrecognised_message(unknown: Sequence[str], candidates: Iterable[str], beam: bool = False) -> str:
    """The error message for the tokens a parser did not consume.

    A token that starts with ``-`` is an unknown flag (named, with its close
    match among ``candidates``); a plain token right after one is taken as its
    value; any other plain token is a stray argument.
    """
    candidates = list(candidates)
    flags, strays = [], []
    previous_was_flag = False
    for token in unknown:
        if token.startswith("-") and not _is_number(token):
            name = token.split("=", 1)[0]
            match = close_match(name, candidates)
            flags.append(f"{name} (did you mean {match}?)" if match else name)
            previous_was_flag = "=" not in token
        elif previous_was_flag:
            previous_was_flag = False
        else:
            strays.append(repr(token))
    parts = []
    if flags:
        what = "flag of this command nor a Beam pipeline option" if beam else "flag of this command"
        parts.append(f"unrecognised flag{'s' if len(flags) > 1 else ''} {', '.join(flags)}: not a {what} "
                     f"(prefixes of flags are not accepted)")
    if strays:
        parts.append(f"unexpected argument{'s' if len(strays) > 1 else ''} {', '.join(strays)}"
                     + ("; Beam flags look like --name=value" if beam else ""))
    return "; ".join(parts)


def _is_number(token: str) -> bool:
    return re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", token) is not None


def _beam_parser() -> argparse.ArgumentParser:
    """Beam's option parser: every ``PipelineOptions`` subclass's flags, abbreviations off.

    Built the way ``PipelineOptions.get_all_options`` builds it (last unique
    instance of each direct subclass, ``_BeamArgumentParser(allow_abbrev=False)``),
    but raising :class:`UsageError` instead of exiting on a bad value.
    """
    from apache_beam.options import pipeline_options

    class _RaisingBeamParser(pipeline_options._BeamArgumentParser):  # pylint: disable=protected-access
        def error(self, message):
            raise UsageError(f"Beam flag error: {message}")

    parser = _RaisingBeamParser(allow_abbrev=False, add_help=False)
    subset = {}
    for options_class in pipeline_options.PipelineOptions.__subclasses__():
        subset.setdefault(str(options_class), options_class)
    for options_class in subset.values():
        options_class._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def beam_option_strings() -> List[str]:
    """Every flag Beam's option parser recognises (``--runner``, ``--direct_num_workers``, ...)."""
    return sorted(option for action in _beam_parser()._actions for option in action.option_strings)


def parse_beam_flags(flags: Sequence[str], own_options: Iterable[str] = ()) -> argparse.Namespace:
    """Parses Beam flags with Beam's option parser; every token must be consumed.

    Args:
        flags: command-line tokens that are not the command's own flags.
        own_options: the command's own flags, offered as close matches too.

    Returns:
        the Beam options namespace (``runner``, ``direct_running_mode``, ...).

    Raises:
        UsageError: an unknown flag or stray argument (each named, with its
            close match among ``own_options`` and Beam's flags), or a value
            Beam's parser rejects (``--direct_num_workers=two``,
            ``--direct_running_mode=fast``).
    """
    parser = _beam_parser()
    namespace, unknown = parser.parse_known_args(list(flags))
    if unknown:
        beam_options = [option for action in parser._actions for option in action.option_strings]
        raise UsageError(unrecognised_message(unknown, list(own_options) + beam_options, beam=True))
    return namespace


def check_beam_flags(flags: Sequence[str], own_options: Iterable[str] = ()) -> List[str]:
    """``flags`` unchanged when Beam's option parser recognises all of them (see :func:`parse_beam_flags`).

    Raises:
        UsageError: as :func:`parse_beam_flags`.
    """
    parse_beam_flags(flags, own_options)
    return list(flags)


DIRECT_RUNNERS = ("directrunner", "direct", "switchingdirectrunner")
DIRECT_RUNNING_MODE_DEFAULT = "--direct_running_mode=in_memory"
SKIP_PRISM_FLAG = "--allow_unsafe_triggers"
"""Beam >= 2.6x's ``DirectRunner`` first tries the Prism runner (building an sdist of ``--setup_file``
twice and downloading a Prism binary), then falls back to the Python FnApiRunner, whatever
``--direct_running_mode`` says. Its ``_PrismRunnerSupportVisitor`` skips Prism for pipelines that
``allow_unsafe_triggers``; that flag only turns off a check of data-dependent triggers in streaming
windows, which our batch pipelines do not use, so it is how a local run goes straight to the
FnApiRunner that ``--direct_running_mode`` configures (``apache_beam/runners/direct/direct_runner.py``)."""


def local_beam_flags(flags: Sequence[str] | None) -> List[str]:
    """Beam flags for a run, with the local defaults added when the runner is the DirectRunner.

    The one owner of the local Beam defaults (ExampleGen, the Evaluator and the
    TFX pipeline's ``beam_pipeline_args`` all take their flags through it).
    With ``--runner`` absent or ``DirectRunner``: ``--direct_running_mode=in_memory``
    unless a running mode is given, and :data:`SKIP_PRISM_FLAG` (see there)
    unless given. Other runners (``DataflowRunner``, ``PrismRunner``, ...) get the
    flags unchanged.

    Args:
        flags: Beam command-line flags (``--name=value`` or ``--name value``).

    Returns:
        a new list: ``flags`` in order, then the added defaults.
    """
    flags = [str(flag) for flag in (flags or [])]
    runner = None
    for index, flag in enumerate(flags):
        if flag.startswith("--runner="):
            runner = flag.split("=", 1)[1]
        elif flag == "--runner" and index + 1 < len(flags):
            runner = flags[index + 1]
    if runner is not None and runner.lower() not in DIRECT_RUNNERS:
        return flags
    if not any(flag.startswith("--direct_running_mode") for flag in flags):
        flags.append(DIRECT_RUNNING_MODE_DEFAULT)
    if SKIP_PRISM_FLAG not in flags:
        flags.append(SKIP_PRISM_FLAG)
    return flags


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for our CLIs: no abbreviations, unknown flags named with their close match.

    Unknown flags are reported before missing required ones (``--run 1`` for
    ``--run-id 1`` names ``--run`` and suggests ``--run-id``). Errors go
    through ``argparse``'s ``error``: usage and ``<prog>: error: ...`` on
    stderr, exit status 2.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def option_strings(self) -> List[str]:
        """The long flags of this parser (``--help`` included)."""
        return [option for action in self._actions for option in action.option_strings if option.startswith("--")]

    def _unconsumed(self, args: Sequence[str]) -> List[str]:
        """The tokens this parser does not consume, with required flags treated as optional."""
        required = [action for action in self._actions if action.option_strings and action.required]
        for action in required:
            action.required = False
        try:
            return super().parse_known_args(list(args))[1]
        finally:
            for action in required:
                action.required = True

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        unknown = self._unconsumed(args)
        if unknown:
            self.error(unrecognised_message(unknown, self.option_strings()))
        return super().parse_args(args, namespace)

    def parse_args_and_beam_flags(self, args: Sequence[str] | None = None) -> Tuple[argparse.Namespace, List[str]]:
        """Our flags, and the rest as Beam flags checked by Beam's option parser.

        Returns:
            (namespace, beam_flags): ``beam_flags`` are the other tokens,
            unchanged and in order.

        Exits with status 2 (argparse's ``error``) on an unknown flag, a
        stray argument or a value Beam rejects, before any work is done.
        """
        args = list(sys.argv[1:] if args is None else args)
        try:
            check_beam_flags(self._unconsumed(args), self.option_strings())
        except UsageError as error:
            self.error(str(error))
        return self.parse_known_args(args)


# --------------------------------------------------------------------------
# The exit-2 wrapper
# --------------------------------------------------------------------------

def _short_path(filename: str) -> str:
    filename = os.path.abspath(filename)
    if filename.startswith(REPO_ROOT + os.sep):
        return os.path.relpath(filename, REPO_ROOT)
    marker = os.sep + "site-packages" + os.sep
    return filename.split(marker, 1)[1] if marker in filename else filename


def _is_ours(filename: str) -> bool:
    filename = os.path.abspath(filename)
    return filename.startswith(REPO_ROOT + os.sep) and os.sep + ".venv" + os.sep not in filename \
        and os.sep + "site-packages" + os.sep not in filename


def describe_exception(error: BaseException) -> str:
    """One line: the exception type, its message, where it was raised and our last frame above it.

    Example: ``AssertionError: Results do not correspond to current coco set
    (raised in pycocotools/coco.py:327 loadRes, from components/metrics_coco.py:88 evaluate_results)``.
    """
    message = " ".join(str(error).split())
    if isinstance(error, KeyError) and error.args:
        message = f"missing key {error.args[0]!r}"
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + " ..."
    text = f"{type(error).__name__}: {message}" if message else f"{type(error).__name__} (no message)"
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        where = f"raised in {_short_path(last.filename)}:{last.lineno} {last.name}"
        ours = [frame for frame in frames if _is_ours(frame.filename)]
        if ours and ours[-1] is not last:
            where += f", from {_short_path(ours[-1].filename)}:{ours[-1].lineno} {ours[-1].name}"
        text += f" ({where})"
    return text


def run(main: Callable[[], Optional[int]], prog: str | None = None) -> int:
    """Runs a CLI ``main`` and returns its exit status; unhandled exceptions become exit status 2.

    Args:
        main: the command's ``main()``; its return value (0 / 1 / 2, or None
            for 0) is passed through; ``SystemExit`` (argparse's exit 2,
            ``--help``'s 0) propagates unchanged.
        prog: the command name printed before the error (default: ``sys.argv[0]``).

    Returns:
        the exit status: ``main``'s, 2 for any other exception (one line on
        stderr: ``<prog>: error: <Type>: <message> (raised in <file:line>,
        from <our file:line>)``), 130 on Ctrl-C. With ``DARKPOSE_DEBUG=1``
        the traceback is printed first.

    When ``main`` is the running script's own (``python -m <module>`` defines it in ``__main__``), library
    start-up noise is filtered from its standard error first (:func:`toolkit.quiet.install`; not for a
    ``main`` called from other code, such as a test).
    """
    prog = prog or os.path.basename(sys.argv[0] or "darkpose")
    if getattr(main, "__module__", None) == "__main__":
        from toolkit import quiet

        quiet.install()
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 -- the point of the wrapper
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
            hint = ""
        else:
            hint = f" [{DEBUG_ENV}=1 shows the traceback]"
        print(f"{prog}: error: {describe_exception(error)}{hint}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    return 0 if status is None else int(status)
