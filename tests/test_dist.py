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
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIST = Path(os.environ.get("FASTWORKER_DIST", ROOT / "dist"))
SDISTS = sorted(DIST.glob("fastworker-*.tar.gz")) if DIST.exists() else []
WHEELS = sorted(DIST.glob("fastworker-*.whl")) if DIST.exists() else []

pytestmark = [
    pytest.mark.skipif(not (SDISTS and WHEELS), reason="no dist/: run make test-dist"),
    pytest.mark.timeout(900),
]

COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "cython", "cythonize")

#: Run inside the fresh environment: one small graph per way in.
WAYS_IN = textwrap.dedent(
    """
    import shutil, sys
    import fastworker
    from distributed import Client, LocalCluster, Nanny

    assert all(shutil.which(c) is None for c in {compilers!r}), "a compiler on PATH"
    try:
        import Cython  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("Cython is installed")
    assert fastworker.DISTRIBUTED_SUPPORTED

    def inc(x):
        return x + 1

    def run(name, client):
        futures = client.map(inc, range(20))
        total = client.submit(sum, futures).result()
        assert total == sum(range(1, 21)), total
        states = client.run(lambda dask_worker: type(dask_worker.state).__module__)
        assert set(states.values()) == {{"fastworker.workerstate"}}, states
        print(name, "ok", flush=True)

    common = dict(n_workers=1, threads_per_worker=2, dashboard_address=None)
    if __name__ == "__main__":
        with LocalCluster(processes=True, **common) as cluster, Client(cluster) as client:
            client.register_plugin(fastworker.FastWorkerPlugin())
            run("plugin", client)
        with LocalCluster(processes=True, worker_class=Nanny, preload=["fastworker"],
                          **common) as cluster, Client(cluster) as client:
            run("preload", client)
        with LocalCluster(processes=False, worker_class=fastworker.Worker,
                          **common) as cluster, Client(cluster) as client:
            run("Worker", client)
        with LocalCluster(processes=True, worker_class=fastworker.Nanny,
                          **common) as cluster, Client(cluster) as client:
            run("Nanny", client)
        with LocalCluster(processes=False, WorkerStateClass=fastworker.WorkerState,
                          **common) as cluster, Client(cluster) as client:
            run("WorkerStateClass", client)
    """
).format(compilers=COMPILERS)


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
    script = tmp_path / "ways_in.py"
    script.write_text(WAYS_IN)
    # PATH: the environment's own bin only (no compiler, no Cython); run from an
    # empty folder so that the checkout is not importable.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = str(python.parent)
    assert all(shutil.which(c, path=env["PATH"]) is None for c in COMPILERS)
    proc = subprocess.run([python, script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    for name in ("plugin", "preload", "Worker", "Nanny", "WorkerStateClass"):
        assert f"{name} ok" in proc.stdout
