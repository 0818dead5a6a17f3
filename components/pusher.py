"""Pusher: versioned, atomic copy of a blessed ``Format-Serving`` SavedModel.

Layout of a push destination (local path or ``gs://``)::

    <push_destination>/<version>/               the SavedModel (saved_model.pb, variables/, ...)
    <push_destination>/<version>/push_record.json   what was pushed, from which run, which metrics
    <push_destination>/<version>/PUSH_COMPLETE      commit marker, written last
    <push_destination>/.staging-<id>/           in-flight copy (removed at the end)

Versions are positive integers (TF Serving's layout), each one greater than
every version directory present, complete or not, so they only increase. The
TFX pipeline's Pusher (TFX's ``Pusher`` component with
:class:`components.tfx_components.PosePusherExecutor`) pushes the same way,
with versions named by Unix time as TFX's own Pusher names them.

Atomicity: a version counts as pushed only when ``PUSH_COMPLETE`` exists, and
it is written after every other file. The model is first copied to a staging
folder whose name is not a version (TF Serving and :func:`list_versions`
ignore it). Locally the staging folder, marker included, is then renamed to
``<version>`` (a rename is atomic on one filesystem, so TF Serving never sees
a partial version). Object stores (``gs://``) have no folder rename, so the
staged objects are copied server-side (GCS rewrite, no re-upload) into
``<version>/`` in this order: variables, assets and every other file, then
``saved_model.pb`` (so a TF Serving poll that lands mid-copy finds no
SavedModel and retries later, instead of loading half-written variables), then
``push_record.json``, then the ``PUSH_COMPLETE`` marker, which is the commit:
readers (:func:`list_versions`, :func:`latest_blessed_version`,
:func:`components.evaluator.resolve_baseline`) ignore versions without it. A
push cut short leaves a staging folder or an uncommitted version, never a
committed partial one, and its version number is never reused. Two pushers
writing to one ``gs://`` destination at the same moment are not supported
(GCS offers no atomic claim of a folder name through ``tf.io.gfile``): a
version that appears while the staging copy runs stops the push with an error.

Only a ``BLESSED`` blessing pushes; an unblessed, missing or corrupt blessing
pushes nothing and says why.

CLI::

    python -m components.pusher --model-dir <dir with Format-Serving> --blessing <dir> \
        --destination <dir|gs://...> --run-id <id>
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
import uuid
from typing import Any, Dict, List, Mapping

import tensorflow as tf

from components.blessing import BlessingError, read_blessing
from toolkit import cli
from schemas.serving import SAVED_MODEL_DIR
from schemas import jsonio

PUSH_RECORD = "push_record.json"
COMMIT_MARKER = "PUSH_COMPLETE"
STAGING_PREFIX = ".staging-"
COPY_DELAY_ENV = "DARKPOSE_PUSH_COPY_DELAY_S"
"""Test-only hook: seconds to sleep after each copied file (to interrupt a push mid-copy)."""

logger = logging.getLogger(__name__)


def saved_model_path(model_dir: str) -> str:
    """``<model_dir>/Format-Serving`` if present, else ``model_dir`` if it is a SavedModel itself.

    Raises:
        FileNotFoundError: neither holds a ``saved_model.pb``.
    """
    for candidate in (os.path.join(model_dir, SAVED_MODEL_DIR), model_dir):
        if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise FileNotFoundError(f"no SavedModel in {model_dir} (looked for {SAVED_MODEL_DIR}/saved_model.pb "
                            "and saved_model.pb)")


def _is_version(name: str) -> bool:
    return name.isdigit() and int(name) > 0


def list_versions(push_destination: str, complete_only: bool = True) -> List[int]:
    """Sorted versions at ``push_destination`` (only committed ones unless ``complete_only=False``)."""
    if not tf.io.gfile.isdir(push_destination):
        return []
    versions = []
    for entry in tf.io.gfile.listdir(push_destination):
        name = entry.rstrip("/")
        if not _is_version(name):
            continue
        if complete_only and not tf.io.gfile.exists(os.path.join(push_destination, name, COMMIT_MARKER)):
            continue
        versions.append(int(name))
    return sorted(versions)


def read_push_record(push_destination: str, version: int) -> Dict[str, Any] | None:
    """The push record of a committed version, or ``None`` when missing/unreadable/uncommitted."""
    directory = os.path.join(push_destination, str(version))
    if not tf.io.gfile.exists(os.path.join(directory, COMMIT_MARKER)):
        return None
    try:
        with tf.io.gfile.GFile(os.path.join(directory, PUSH_RECORD), "r") as handle:
            return json.loads(handle.read())
    except (tf.errors.NotFoundError, ValueError):
        return None


TFX_VERSION_MIN = 10 ** 9
"""TFX's standard Pusher names a filesystem push ``str(int(time.time()))``: a version at least this large."""


def is_tfx_push(push_destination: str, version: int) -> bool:
    """Whether ``<push_destination>/<version>`` is a complete push of TFX's standard Pusher.

    TFX's Pusher (``tfx.components.Pusher`` with a filesystem destination)
    writes ``<base_directory>/<unix time>/``: the SavedModel's files, with
    ``saved_model.pb`` copied last, and none of our markers; it only pushes
    blessed models. So a version counts as a TFX push when its name is a Unix
    time (>= :data:`TFX_VERSION_MIN`), it holds ``saved_model.pb`` and it has
    neither :data:`PUSH_RECORD` nor :data:`COMMIT_MARKER` (ours, possibly cut
    short, are never read as TFX pushes).
    """
    if version < TFX_VERSION_MIN:
        return False
    directory = os.path.join(push_destination, str(version))
    return (tf.io.gfile.exists(os.path.join(directory, "saved_model.pb"))
            and not tf.io.gfile.exists(os.path.join(directory, PUSH_RECORD))
            and not tf.io.gfile.exists(os.path.join(directory, COMMIT_MARKER)))


def latest_blessed_version(push_destination: str) -> str | None:
    """Directory of the newest pushed blessed model at ``push_destination``, else ``None``.

    Two layouts are read: ours (a committed version whose push record says
    blessed) and TFX's standard Pusher's (see :func:`is_tfx_push`; TFX pushes
    only blessed models). The highest version of either kind wins.
    """
    for version in reversed(list_versions(push_destination, complete_only=False)):
        if tf.io.gfile.exists(os.path.join(push_destination, str(version), COMMIT_MARKER)):
            record = read_push_record(push_destination, version)
            if record and record.get("blessed") is True:
                return os.path.join(push_destination, str(version))
        elif is_tfx_push(push_destination, version):
            return os.path.join(push_destination, str(version))
    return None


def _next_version(push_destination: str) -> int:
    existing = list_versions(push_destination, complete_only=False)
    return (existing[-1] + 1) if existing else 1


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` for local and ``gs://`` paths ("" for the root itself)."""
    path, root = path.rstrip("/"), root.rstrip("/")
    return "" if path == root else path[len(root) + 1:]


def _copy_tree(source: str, target: str, delay: float) -> List[str]:
    """Copies ``source`` into ``target`` with tf.io.gfile; returns the relative file paths ("/"-separated).

    A source that is itself a pushed version keeps its own :data:`PUSH_RECORD`
    and :data:`COMMIT_MARKER`: they are not copied (the push writes new ones).
    """
    copied = []
    for directory, _, files in tf.io.gfile.walk(source):
        relative = _relative(directory, source)
        target_directory = f"{target.rstrip('/')}/{relative}" if relative else target
        tf.io.gfile.makedirs(target_directory)
        for name in sorted(files):
            if not relative and name in (PUSH_RECORD, COMMIT_MARKER):
                continue
            tf.io.gfile.copy(f"{directory.rstrip('/')}/{name}", f"{target_directory.rstrip('/')}/{name}",
                             overwrite=True)
            copied.append(f"{relative}/{name}" if relative else name)
            if delay > 0:
                time.sleep(delay)
    return copied


def commit_order(files: List[str]) -> List[str]:
    """The order in which a version's files are written on an object store.

    Every other file first, then the SavedModel's graph (``saved_model.pb`` /
    ``saved_model.pbtxt``; TF Serving only treats a folder holding it as a
    model), then :data:`PUSH_RECORD`, then :data:`COMMIT_MARKER` (the commit).
    """
    def rank(name: str) -> int:
        if name == COMMIT_MARKER:
            return 3
        if name == PUSH_RECORD:
            return 2
        return 1 if name in ("saved_model.pb", "saved_model.pbtxt") else 0

    return sorted(files, key=lambda name: (rank(name), name))


def _publish_remote(staging: str, final: str, files: List[str], delay: float) -> None:
    """Copies the staged ``files`` to ``final`` on an object store in :func:`commit_order`."""
    for name in commit_order(files):
        target = f"{final}/{name}"
        tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
        tf.io.gfile.copy(f"{staging}/{name}", target, overwrite=True)  # GCS: server-side rewrite
        if delay > 0:
            time.sleep(delay)


def publish(source: str, push_destination: str, fields: Mapping[str, Any], min_version: int = 1,
            extra_files: Mapping[str, str] | None = None) -> Dict[str, Any]:
    """Copies the SavedModel ``source`` to a new committed ``<push_destination>/<version>/`` (see module doc).

    The one owner of the push mechanics, used by :func:`run_pusher` (the CLI)
    and by the TFX pipeline's Pusher executor
    (:class:`components.tfx_components.PosePusherExecutor`). It does not look at
    blessings: callers push only blessed models.

    Args:
        source: a SavedModel directory (holds ``saved_model.pb``), local or ``gs://``.
        push_destination: local directory or ``gs://`` prefix (created if missing).
        fields: what the push record says besides ``version``, ``path``,
            ``source``, ``pushed_at`` and ``files`` (``run_id``, ``blessed``,
            ``metrics``, ``baseline``, ...); JSON-serialisable.
        min_version: the version is at least this (TFX's Pusher names versions by
            Unix time: pass ``int(time.time())`` for that naming) and greater than
            every version present.
        extra_files: ``{relative path in the version: source file}`` copied into the same
            staged version before its record and commit marker (the deployment artifacts,
            :func:`deploy_files`).

    Returns:
        the push record (also in ``<version>/push_record.json``).

    Raises:
        FileNotFoundError: ``source`` holds no ``saved_model.pb``.
        FileExistsError: the version appeared during the push (concurrent pusher); nothing committed.
    """
    if not tf.io.gfile.exists(f"{source.rstrip('/')}/saved_model.pb"):
        raise FileNotFoundError(f"no SavedModel to push in {source} (saved_model.pb missing)")
    delay = float(os.environ.get(COPY_DELAY_ENV, "0") or 0)
    destination = push_destination.rstrip("/") or push_destination
    tf.io.gfile.makedirs(destination)
    local = "://" not in destination
    staging = f"{destination}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        files = _copy_tree(source, staging, delay)  # the slow part, outside the version namespace
        for relative, path in sorted((extra_files or {}).items()):
            tf.io.gfile.makedirs(os.path.dirname(f"{staging}/{relative}"))
            tf.io.gfile.copy(path, f"{staging}/{relative}", overwrite=True)
            files.append(relative)
        version = max(int(min_version), _next_version(destination))
        final = f"{destination}/{version}"
        record = {**dict(fields), "version": version, "path": final, "source": source,
                  "pushed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), "files": files}
        with tf.io.gfile.GFile(f"{staging}/{PUSH_RECORD}", "w") as handle:
            handle.write(jsonio.dumps(record, indent=2, sort_keys=True, default=float))
        with tf.io.gfile.GFile(f"{staging}/{COMMIT_MARKER}", "w") as handle:
            handle.write(record["pushed_at"])
        if tf.io.gfile.exists(final):
            raise FileExistsError(f"version {final} appeared during the push (concurrent pusher?); "
                                  "nothing was committed")
        if local:
            os.rename(staging, final)  # atomic on one filesystem: the version appears complete or not at all
        else:
            _publish_remote(staging, final, files + [PUSH_RECORD, COMMIT_MARKER], delay)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    logger.info("pushed %s -> %s", source, final)
    return record


def run_pusher(model_dir: str, blessing_dir: str, push_destination: str, run_id: str,
               metrics: Mapping[str, Any] | None = None) -> Dict[str, Any] | None:
    """Pushes ``<model_dir>/Format-Serving`` to ``<push_destination>/<version>/`` if blessed.

    Args:
        model_dir: trainer output (holds ``Format-Serving``) or a SavedModel directory.
        blessing_dir: the Evaluator's blessing directory.
        push_destination: local directory or ``gs://`` prefix.
        run_id: pipeline run id, kept in the push record ("" = a UTC timestamp id).
        metrics: metrics to record; default the blessing's ``metrics``.

    Returns:
        The push record (``version``, ``path``, ``run_id``, ``metrics``, ``source``,
        ``pushed_at``, ...) or ``None`` when nothing was pushed (not blessed, or
        the blessing is missing or corrupt; the reason is logged).

    Raises:
        ValueError: non-string ``run_id``, empty ``push_destination``.
        FileNotFoundError: blessed but ``model_dir`` holds no SavedModel.
    """
    if run_id is None or not isinstance(run_id, str):
        raise ValueError(f"run_id must be a string, got {run_id!r}")
    run_id = run_id or datetime.datetime.now(datetime.timezone.utc).strftime("run-%Y%m%dT%H%M%SZ")
    if not push_destination:
        raise ValueError(f"push_destination must be set, got {push_destination!r}")
    try:
        blessing = read_blessing(blessing_dir)
    except BlessingError as error:
        logger.error("not pushing: %s", error)
        return None
    if not blessing["blessed"]:
        logger.warning("not pushing: model is NOT_BLESSED (%s)", "; ".join(blessing.get("reasons", [])) or "no reason")
        return None
    extra, deploy = deploy_files(blessing.get("deploy_artifacts") or [])
    return publish(saved_model_path(model_dir), push_destination, {
        "run_id": run_id,
        "blessed": True,
        "blessing_dir": blessing_dir,
        "metrics": dict(metrics if metrics is not None else blessing.get("metrics", {})),
        "baseline": blessing.get("baseline"),
        **deploy,
    }, extra_files=extra)


def _sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def deploy_files(rows) -> tuple:
    """The blessed deployment artifacts of an Evaluator's ``deploy_artifacts`` rows, to push beside the SavedModel.

    Each ``BLESSED`` artifact goes to ``deploy/<format>/<file>`` (with its ``deploy.json``) in the version;
    ``deploy/deploy_manifest.json`` lists them: format, runtime, precision, input and output specs (from
    ``deploy.json``), metrics, delta and bound, size, ms/crop and sha256 of the file. A ``NOT_BLESSED``
    artifact (or one whose file is gone) is not pushed and is named with its reasons in
    ``deploy_refused``; it never blocks the SavedModel.

    Returns:
        ``({relative path: source file}, {"deploy_artifacts": [...], "deploy_refused": [...]})``
        (the second is empty when there are no rows).
    """
    from schemas import serving

    extra: Dict[str, str] = {}
    pushed, refused = [], []
    for row in rows:
        path = row.get("path") or ""
        if row.get("verdict") != "BLESSED" or not tf.io.gfile.exists(path):
            refused.append({"format": row.get("format"), "delta": row.get("delta"), "max_delta": row.get("max_delta"),
                            "reasons": row.get("reasons") or ["artifact file missing"]})
            continue
        folder = f"deploy/{row['format']}"
        spec_path = f"{os.path.dirname(path)}/{serving.DEPLOY_SPEC_FILE}"
        spec = json.loads(tf.io.gfile.GFile(spec_path).read()) if tf.io.gfile.exists(spec_path) else {}
        extra[f"{folder}/{os.path.basename(path)}"] = path
        if spec:
            extra[f"{folder}/{serving.DEPLOY_SPEC_FILE}"] = spec_path
        pushed.append({"format": row["format"], "runtime": row.get("runtime"), "precision": row.get("precision"),
                       "file": f"{folder}/{os.path.basename(path)}", "sha256": _sha256(path),
                       "size_bytes": row.get("size_bytes"), "ms_per_crop": row.get("ms_per_crop"),
                       "input": spec.get("input"), "outputs": spec.get("outputs"), "decode": spec.get("decode"),
                       "opset": spec.get("opset"), "metrics": row.get("metrics"), "delta": row.get("delta"),
                       "max_delta": row.get("max_delta")})
    if not rows:
        return extra, {}
    if pushed:
        import tempfile

        manifest = os.path.join(tempfile.mkdtemp(prefix="deploy_manifest_"), serving.DEPLOY_MANIFEST_FILE)
        jsonio.write(manifest, {"artifacts": pushed, "refused": refused})
        extra[f"deploy/{serving.DEPLOY_MANIFEST_FILE}"] = manifest
    for entry in refused:
        logger.warning("not pushing deployment artifact %s: %s", entry["format"], "; ".join(entry["reasons"]))
    return extra, {"deploy_artifacts": pushed, "deploy_refused": refused}


def main(argv: List[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m components.pusher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--blessing", required=True, help="the Evaluator's blessing directory")
    parser.add_argument("--destination", required=True, help="push destination (local dir or gs://)")
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    record = run_pusher(args.model_dir, args.blessing, args.destination, args.run_id)
    if record is None:
        print("nothing pushed")
        return 1
    print(jsonio.dumps({"version": record["version"], "path": record["path"]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m components.pusher"))
