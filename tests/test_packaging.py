"""The installed (non-editable) package holds every file the code loads at run time (issue 22 item 4).

Builds the wheel as `pip install .` does (setuptools, no dependencies, no build isolation) from a copy of
the sources, so the worktree gets no build/ or egg-info, and checks the wheel's file list.

Run: .venv/bin/python -m pytest -q tests/test_packaging.py
"""
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("toolkit", "pose", "schemas", "trainer", "components", "pipeline")
DATA_SUFFIXES = (".pbtxt", ".yaml", ".yml", ".json", ".txt", ".csv")
"""Non-Python files a module may load from beside itself (text protos, configs, tables)."""


def _package_files():
    """Relative paths ('/'-separated) of the packages' sources, without caches and editor leftovers."""
    files = []
    for package in PACKAGES:
        for directory, subdirs, names in os.walk(os.path.join(ROOT, package)):
            subdirs[:] = [name for name in subdirs if name != "__pycache__"]
            files += [os.path.relpath(os.path.join(directory, name), ROOT).replace(os.sep, "/") for name in names
                      if not name.endswith((".pyc", ".orig", ".rej", "~"))]
    return sorted(files)


def test_the_wheel_holds_every_runtime_file(tmp_path):
    from components import data_validation

    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(os.path.join(ROOT, name), source / name)
    files = _package_files()
    for relative in files:
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, relative), source / relative)
    out = tmp_path / "wheel"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-q", "-w", str(out), str(source)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = list(out.glob("darkpose_tf-*.whl"))
    assert len(wheels) == 1
    inside = set(zipfile.ZipFile(wheels[0]).namelist())

    # Files the code loads by a path beside its modules.
    schema = os.path.relpath(data_validation.SCHEMA_FILE, ROOT).replace(os.sep, "/")
    assert schema == "schemas/data_gate.pbtxt"
    data_files = [relative for relative in files if relative.endswith(DATA_SUFFIXES)]
    assert schema in data_files
    missing = sorted(set(data_files) - inside)
    assert not missing, f"not in the wheel: {missing}"
    # and every module
    modules = [relative for relative in files if relative.endswith(".py")]
    assert not sorted(set(modules) - inside)
