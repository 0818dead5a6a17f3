"""ExampleGen's cache key for real data: a sha256 of the bytes of its local inputs.

TFX reuses a previous ExampleGen output when the execution's parameters are
unchanged; the local run passes :func:`input_fingerprint` as the
``input_fingerprint`` parameter, so the cache is hit only when the inputs'
*content* is unchanged. Sizes and modification times are not trusted: an edit
that keeps both (``cp -p``, ``rsync -t``, a restored backup) must re-ingest.

What the key covers (local paths):

* each input file (``train_annotations``, ``eval_annotations``, ``det_file``):
  its role and the sha256 of its bytes;
* each image folder (``train_images``, ``eval_images``): its role, then every
  regular file below it (subfolders included; a symlinked file counts as its
  target, a symlinked subfolder is not entered),
  in sorted order of the path relative to the folder: that relative path, the
  size in bytes and the sha256 of the bytes. Adding, removing, renaming or
  rewriting any file (an image or not) changes the key;
* not covered: modification times, absolute paths (they are ExampleGen's own
  parameters, already in TFX's key), file modes, empty folders, files below a
  symlinked subfolder.

The config sections ExampleGen reads (``dataset``, ``data``, ``codec``, and for
``bottom_up`` the ``approach``/``bottom_up`` sections) are ExampleGen's
``config_json`` parameter, so their content is already in TFX's key.

Remote inputs (``gs://`` ...) are not read here: the key is ``run:<run id>``,
i.e. never a cache hit (every run re-ingests).

Cost: every byte of every input is read once per run (the images too); files
are hashed by a small thread pool (hashlib releases the GIL), so the time is
the disk's read time of the dataset or sha256's (about 580 MB/s a core on the
development machine), whichever is longer, against ExampleGen's decode, crop
and encode of every person it skips on a hit.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Mapping, Tuple

KEY_ORDER = ("train_annotations", "train_images", "eval_annotations", "eval_images", "det_file")
"""Order in which the roles enter the key."""

_BLOCK = 1 << 20
_WORKERS = 8


def file_sha256(path: str) -> Tuple[str, int]:
    """(sha256 hex, size in bytes) of a local file's bytes, read once in 1 MiB blocks.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _folder_files(folder: str) -> List[str]:
    """Relative paths ('/'-separated) of every regular file below ``folder``, sorted."""
    names = []
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                names.append(os.path.relpath(path, folder).replace(os.sep, "/"))
    return sorted(names)


def _entries(inputs: Mapping[str, str]) -> Iterator[Tuple[str, str, str]]:
    """(role, name in the key, local path) of every file the key covers, in key order."""
    for role in KEY_ORDER:
        path = inputs.get(role)
        if not path:
            continue
        if os.path.isdir(path):
            for name in _folder_files(path):
                yield role, name, os.path.join(path, name)
        else:
            yield role, "", path


def input_fingerprint(inputs: Mapping[str, str], run_id: str, stats: Dict[str, float] | None = None) -> str:
    """ExampleGen's cache key: sha256 over the content of its local inputs (coverage in the module doc).

    Args:
        inputs: ExampleGen's inputs by role (``train_annotations``, ``train_images``,
            ``eval_annotations``, ``eval_images``, ``det_file``; empty or missing roles skipped).
        run_id: the run's id, the key of a run with a remote input.
        stats: if given, filled with ``files`` (count) and ``bytes`` (total) hashed.

    Returns:
        64 hex digits, or ``run:<run_id>`` when any input is remote (``scheme://``).

    Raises:
        OSError: a local input cannot be read.
    """
    if any(inputs.get(role) and "://" in inputs[role] for role in KEY_ORDER):
        return f"run:{run_id}"
    entries = list(_entries(inputs))
    # A file under two roles (MPII: one image folder for both splits) is read once.
    paths = sorted({os.path.realpath(path) for _, _, path in entries})
    with ThreadPoolExecutor(max_workers=min(_WORKERS, max(1, len(paths)))) as pool:
        hashes = dict(zip(paths, pool.map(file_sha256, paths)))
    digest = hashlib.sha256()
    for role, name, path in entries:
        sha, size = hashes[os.path.realpath(path)]
        digest.update(f"{role}\0{name}\0{size}\0{sha}\n".encode("utf-8"))
    if stats is not None:
        stats.update(files=len(paths), bytes=sum(size for _, size in hashes.values()))
    return digest.hexdigest()
