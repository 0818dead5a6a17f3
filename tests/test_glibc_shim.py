"""tools/glibc_shim.sh: nothing where glibc >= 2.39; wrappers around the real Python below it, idempotent.

The shim's download step (apt-get from Debian 13) runs in `make install` on this
machine; these tests reuse the repository's ``.glibc-shim/`` where it exists and
never download.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "glibc_shim.sh")
SHIM = os.path.join(ROOT, ".glibc-shim")
LOADER = os.path.join(SHIM, "usr", "lib", "x86_64-linux-gnu", "ld-linux-x86-64.so.2")


def _real_python():
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "python3", "python3.11"):
        os.symlink(_real_python(), venv / "bin" / name)
    return venv


def _run(venv, shim, **env):
    return subprocess.run(["sh", SCRIPT, _real_python(), str(venv), str(shim)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("version", ["2.39", "2.41"])
def test_new_glibc_leaves_the_venv_alone(tmp_path, version):
    venv = _fake_venv(tmp_path)
    result = _run(venv, tmp_path / "shim", SHIM_GLIBC_VERSION=version)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert all(os.path.islink(venv / "bin" / name) for name in ("python", "python3", "python3.11"))
    assert not (tmp_path / "shim").exists() and not (tmp_path / "shim.apt").exists()


@pytest.mark.skipif(not os.path.exists(LOADER), reason="no .glibc-shim here (glibc >= 2.39: not needed)")
def test_old_glibc_wraps_python_idempotently(tmp_path):
    venv = _fake_venv(tmp_path)
    result = _run(venv, SHIM, SHIM_GLIBC_VERSION="2.36")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "runs under Debian 13's loader" in result.stdout
    wrapper = (venv / "bin" / "python").read_text()
    assert not os.path.islink(venv / "bin" / "python") and LOADER in wrapper and _real_python() in wrapper
    probe = subprocess.run([str(venv / "bin" / "python3.11"), "-c",
                            "import os, sys; print(os.confstr('CS_GNU_LIBC_VERSION'), sys.argv[0])", "x"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert tuple(int(p) for p in probe.stdout.split()[1].split(".")[:2]) >= (2, 39)
    before = {name: (venv / "bin" / name).stat().st_mtime_ns for name in ("python", "python3", "python3.11")}
    again = _run(venv, SHIM, SHIM_GLIBC_VERSION="2.36")
    assert again.returncode == 0
    assert {name: (venv / "bin" / name).stat().st_mtime_ns for name in before} == before


def test_dockerfile_uses_the_tfx_image_of_the_locked_version():
    with open(os.path.join(ROOT, "requirements.lock")) as handle:
        tfx_pin = next(line.split("==")[1].strip() for line in handle if line.lower().startswith("tfx=="))
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        dockerfile = handle.read()
    assert f"ARG TFX_IMAGE=gcr.io/tfx-oss-public/tfx:{tfx_pin}" in dockerfile
    assert "FROM ${TFX_IMAGE}" in dockerfile
    for package in ("toolkit", "pose", "schemas", "trainer", "components", "pipeline"):
        assert f"COPY {package}/ {package}/" in dockerfile
