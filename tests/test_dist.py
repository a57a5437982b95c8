"""The packages `make dist` builds work where workers run.

- the sdist builds a wheel with a C compiler and no Cython (it ships the generated C);
- the wheel installs into a fresh virtual environment that has no Cython and no
  compiler on its PATH, and there a small graph runs on a cluster through each way in
  (plugin, preload, fastworker.Worker, fastworker.Nanny, WorkerStateClass=), each
  worker reporting the compiled state machine.

`make test-dist` builds dist/ and runs this file; without dist/ it is skipped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIST = Path(os.environ.get("FASTWORKER_DIST", ROOT / "dist")).resolve()
SDISTS = sorted(DIST.glob("fastworker-*.tar.gz")) if DIST.exists() else []
WHEELS = sorted(DIST.glob("fastworker-*.whl")) if DIST.exists() else []

pytestmark = [
    pytest.mark.skipif(not (SDISTS and WHEELS), reason="no dist/: run make test-dist"),
    pytest.mark.timeout(900),
]

COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "cython", "cythonize")
#: Run inside the fresh environment: one small graph per way in.
SMOKE = Path(__file__).resolve().parent / "ways_in_smoke.py"


def venv(path: Path, *packages: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    python = path / "bin" / "python"
    if packages:
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *packages], check=True)
    return python


def test_sdist_ships_c_and_no_build_artefacts():
    import tarfile

    with tarfile.open(SDISTS[-1]) as tar:
        names = tar.getnames()
    for unit in ("taskstate", "workerstate", "heap", "takeback"):
        assert any(n.endswith(f"fastworker/{unit}.c") for n in names), unit
        assert any(n.endswith(f"fastworker/{unit}.pyx") for n in names), unit
    assert any(n.endswith("fastworker/wsm/handlers.pxi") for n in names)
    assert not any(n.endswith((".so", ".html")) for n in names)


def test_sdist_builds_without_cython(tmp_path):
    python = venv(tmp_path / "builder", "setuptools>=64", "wheel")
    probe = subprocess.run([python, "-c", "import Cython"], capture_output=True)
    assert probe.returncode != 0, "Cython must not be in the builder"
    out = tmp_path / "wheels"
    subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", out, SDISTS[-1]], check=True, cwd=tmp_path)
    assert list(out.glob("fastworker-*.whl"))


def test_wheel_runs_every_way_in_without_compiler(tmp_path):
    python = venv(tmp_path / "image", str(WHEELS[-1]), "-c", str(ROOT / "constraints.txt"))
    script = tmp_path / "ways_in_smoke.py"
    shutil.copy(SMOKE, script)
    # PATH: the environment's own bin only (no compiler, no Cython); run from an
    # empty folder so that the checkout is not importable.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = str(python.parent)
    assert all(shutil.which(c, path=env["PATH"]) is None for c in COMPILERS)
    proc = subprocess.run([python, script, "--no-compiler"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    for name in ("plugin", "preload", "Worker", "Nanny", "WorkerStateClass"):
        assert f"{name} ok" in proc.stdout
