"""The packages `make dist` builds work where workers run.

- the sdist builds a wheel with a C compiler and no Cython (it ships the generated C);
- dist/ has one manylinux wheel per CPython 3.10-3.13 and no plain linux_x86_64 one,
  each tagged with what `auditwheel show` says of it;
- each wheel installs, as from an index (``pip install --no-index --find-links
  dist/``, dask and distributed from the package index), into a fresh virtual
  environment of its CPython that has no Cython and no compiler on its PATH, and
  there a small graph runs on a cluster through each way in (plugin, preload,
  fastworker.Worker, fastworker.Nanny, WorkerStateClass=), each worker reporting the
  compiled state machine.

`make test-dist` builds dist/ and runs this file; without dist/ it is skipped.
"""
from __future__ import annotations

import os
import shutil
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIST = Path(os.environ.get("FASTWORKER_DIST", ROOT / "dist")).resolve()
SDISTS = sorted(DIST.glob("fastworker-*.tar.gz")) if DIST.exists() else []
WHEELS = sorted(DIST.glob("fastworker-*.whl")) if DIST.exists() else []
PYTHONS = ("3.10", "3.11", "3.12", "3.13")

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


def _find_python(version: str) -> str | None:
    """scripts/test_versions.py's interpreter lookup (pythonX.Y on PATH, else pyenv's)."""
    spec = importlib.util.spec_from_file_location(
        "versions_script", ROOT / "scripts" / "test_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_python(version)


def wheel_for(pyver: str) -> Path:
    abi = "cp" + pyver.replace(".", "")
    found = [w for w in WHEELS if f"-{abi}-{abi}-" in w.name]
    assert len(found) == 1, (pyver, [w.name for w in WHEELS])
    return found[0]


def test_one_manylinux_wheel_per_cpython():
    assert not [w.name for w in WHEELS if w.name.endswith("linux_x86_64.whl")
                and "manylinux" not in w.name]
    tags = json.loads((DIST / "manylinux.json").read_text())
    auditwheel = Path(sys.executable).with_name("auditwheel")
    for pyver in PYTHONS:
        wheel = wheel_for(pyver)
        abi = "cp" + pyver.replace(".", "")
        tag = tags[abi]
        assert re.fullmatch(r"manylinux_2_\d+_x86_64", tag), tag
        # the platform part: the tag, and its legacy alias where it has one
        # (manylinux2014_x86_64 for manylinux_2_17_x86_64)
        assert tag in wheel.name.removesuffix(".whl").split("-")[-1].split("."), wheel.name
        shown = " ".join(subprocess.run([auditwheel, "show", wheel], capture_output=True,
                                        text=True, check=True).stdout.split())
        assert f'consistent with the following platform tag: "{tag}"' in shown, shown
        with zipfile.ZipFile(wheel) as z:
            (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/WHEEL")]
            assert f"Tag: {abi}-{abi}-{tag}" in z.read(meta).decode()
            sos = [n for n in z.namelist() if n.endswith(".so")]
        assert {Path(n).name.split(".")[0] for n in sos} >= {
            "taskstate", "workerstate", "heap", "takeback"}
        assert all(f".cpython-{abi[2:]}-x86_64-linux-gnu.so" in n for n in sos), sos


@pytest.mark.parametrize("pyver", PYTHONS)
def test_wheel_runs_every_way_in_without_compiler(tmp_path, pyver):
    python = _find_python(pyver)
    if python is None:
        pytest.fail(f"no CPython {pyver} on this machine (make dist needs each of {PYTHONS})")
    image = tmp_path / "image"
    subprocess.run([python, "-m", "venv", image], check=True)
    pip = [image / "bin" / "python", "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    # dask and distributed from the package index, fastworker from dist/ only
    subprocess.run([*pip, "-c", ROOT / "constraints.txt", "dask", "distributed"], check=True)
    subprocess.run([*pip, "--no-index", "--find-links", DIST, "fastworker"], check=True)
    python = image / "bin" / "python"
    installed = subprocess.run(
        [python, "-c", "import fastworker.workerstate as m; print(m.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()
    assert installed.startswith(str(image)), installed
    (record,) = (image / "lib").glob("python*/site-packages/fastworker-*.dist-info/WHEEL")
    abi = "cp" + pyver.replace(".", "")
    tag = json.loads((DIST / "manylinux.json").read_text())[abi]
    assert f"Tag: {abi}-{abi}-{tag}" in record.read_text()
    script = tmp_path / "ways_in_smoke.py"
    shutil.copy(SMOKE, script)
    # PATH: the environment's own bin only (no compiler, no Cython); run from an
    # empty folder so that the checkout is not importable.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = str(python.parent)
    assert all(shutil.which(c, path=env["PATH"]) is None for c in COMPILERS)
    proc = subprocess.run([python, script, "--no-compiler"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    for name in ("plugin", "preload", "Worker", "Nanny", "WorkerStateClass"):
        assert f"{name} ok" in proc.stdout
