#!/usr/bin/env python3
"""`make test-versions`: fastworker against every supported distributed release, and
on every supported CPython.

For each release in fastworker.SUPPORTED_DISTRIBUTED (on the default Python), and for
each CPython of --pythons (on the newest release), this

1. builds a fastworker wheel once per Python (from a copy of this checkout's files, in
   a cached build environment with Cython), under .venv-versions/wheels/;
2. creates (once, then reuses) .venv-versions/<release>-py<X.Y>/ with dask==release,
   distributed==release and the test tools from the package index, and installs the
   wheel into it;
3. runs the parity tests there (tests/test_versions.py and the API, TaskState and
   WorkerState parity tests: each compares fastworker with that release's own stock)
   and a differential run (tests/test_differential.py: the same stimulus streams
   into that release's stock and fastworker), then a small graph on a cluster through
   each way in (tests/ways_in_smoke.py);
4. prints the matrix (release x result, Python x result) and, with --write, merges the
   cells it ran into docs/version-matrix.json and renders docs/version-matrix.md
   (which docs/versions.md includes).

Standard library only: it runs with any python3.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".venv-versions"
MATRIX_JSON = ROOT / "docs" / "version-matrix.json"
MATRIX_MD = ROOT / "docs" / "version-matrix.md"

#: The parity tests run against each release (each compares fastworker with stock).
PARITY_TESTS = [
    "tests/test_versions.py",
    "tests/test_compat.py",
    "tests/test_api_parity.py",
    "tests/test_taskstate.py",
    "tests/test_worker_state.py",
    "tests/test_worker_state_api.py",
    "tests/test_worker_state_events.py",
    "tests/test_worker_state_transitions.py",
    "tests/test_worker_state_layout.py",
]
#: Test tools installed next to each release (the test extra without the linters).
TEST_TOOLS = ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "numpy",
              "prometheus-client", "packaging"]
BUILD_TOOLS = ["setuptools>=64", "wheel", "Cython>=3.0"]


def _compat() -> dict:
    """fastworker/compat.py's names, read without importing fastworker (which needs
    distributed)."""
    namespace: dict = {"__name__": "fastworker_compat_for_versions"}
    exec(compile((ROOT / "fastworker" / "compat.py").read_text(), "compat.py", "exec"),
         namespace)
    return namespace


def supported_releases() -> tuple[str, ...]:
    return _compat()["SUPPORTED_DISTRIBUTED"]


def dask_for(release: str) -> str:
    """The dask release that distributed ``release`` requires (the same number but
    for DASK_FOR_DISTRIBUTED)."""
    return _compat()["DASK_FOR_DISTRIBUTED"].get(release, release)


def log(message: str) -> None:
    print(f"[test-versions {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def run(cmd, *, cwd=ROOT, env=None, logfile=None, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    if logfile is not None:
        with open(logfile, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{out.stdout}\n[exit {out.returncode}]\n")
    if check and out.returncode:
        tail = "\n".join(out.stdout.splitlines()[-30:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{tail}")
    return out


def find_python(version: str) -> str | None:
    """An interpreter of CPython ``version``: pythonX.Y on PATH, else pyenv's (whose
    shims on PATH answer only for the selected version)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{version}")] + sorted(
        (str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}")), reverse=True
    )
    for exe in candidates:
        if exe is None:
            continue
        probe = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return exe
    return None


def source_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    return sorted(
        ROOT / p for p in listed
        if (p.startswith(("fastworker/", "_build/")) or p in ("setup.py", "pyproject.toml", "README.md",
                                                 "MANIFEST.in", "LICENSE"))
        and (ROOT / p).is_file()
        and not p.endswith((".c", ".so", ".html"))
    )


def source_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def pip(venv: Path, *args, logfile=None):
    return run([venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q",
                *args], logfile=logfile)


def make_venv(python: str, venv: Path, requirements: list[str], logfile: Path) -> None:
    """A cached virtual environment: made and filled once per requirement list."""
    stamp = venv / ".requirements"
    wanted = "\n".join(requirements)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if venv.exists():
        shutil.rmtree(venv)
    log(f"creating {venv.relative_to(ROOT)}")
    run([python, "-m", "venv", venv], logfile=logfile)
    pip(venv, "install", *requirements, logfile=logfile)
    stamp.write_text(wanted)


_WHEELS: dict[str, Path] = {}


def build_wheel(pyver: str, python: str) -> Path:
    """fastworker's wheel for this Python, built once per source state (and looked up
    once per run: the checkout may be edited meanwhile)."""
    if pyver not in _WHEELS:
        _WHEELS[pyver] = _build_wheel(pyver, python)
    return _WHEELS[pyver]


def _build_wheel(pyver: str, python: str) -> Path:
    files = source_files()
    digest = source_hash(files)
    out = CACHE / "wheels" / f"{digest}-py{pyver}"
    wheels = sorted(out.glob("fastworker-*.whl")) if out.exists() else []
    if wheels:
        return wheels[0]
    logfile = CACHE / "logs" / f"build-py{pyver}.log"
    builder = CACHE / f"build-py{pyver}"
    make_venv(python, builder, BUILD_TOOLS, logfile)
    src = CACHE / "src" / f"{digest}-py{pyver}"
    if src.exists():
        shutil.rmtree(src)
    for path in files:
        target = src / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    log(f"building the wheel for Python {pyver}")
    t0 = time.monotonic()
    run([builder / "bin" / "python", "-m", "pip", "wheel", "-q", "--no-deps",
         "--no-build-isolation", "-w", out, src], logfile=logfile)
    shutil.rmtree(src)
    log(f"built in {time.monotonic() - t0:.0f} s")
    return sorted(out.glob("fastworker-*.whl"))[0]


def check_cell(release: str, pyver: str, python: str, stimuli: int) -> dict:
    """Build, install and test one (release, Python) cell; returns its result."""
    t0 = time.monotonic()
    logfile = CACHE / "logs" / f"{release}-py{pyver}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text("")
    cell = {"release": release, "python": pyver, "result": "FAIL", "tests": "",
            "differential": "", "cluster": "", "log": str(logfile.relative_to(ROOT))}
    try:
        wheel = build_wheel(pyver, python)
        venv = CACHE / f"{release}-py{pyver}"
        make_venv(python, venv, [f"dask=={dask_for(release)}", f"distributed=={release}",
                                 *TEST_TOOLS],
                  logfile)
        pip(venv, "install", "--no-deps", "--force-reinstall", wheel, logfile=logfile)
        env = dict(os.environ, FASTWORKER_TEST_INSTALLED="1", PYTHONDONTWRITEBYTECODE="1")
        # Everything runs from an empty folder, through bin/pytest (not python -m
        # pytest): the checkout must not shadow the installed wheel, nor in the
        # interpreters that tests start (tests/test_versions.py checks where
        # fastworker was imported from).
        cwd = CACHE / "run"
        cwd.mkdir(exist_ok=True)
        tests = run([venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider",
                     "-o", "addopts=", "--rootdir", ROOT, *(ROOT / t for t in PARITY_TESTS)],
                    cwd=cwd, env=env, logfile=logfile, check=False)
        summary = [ln for ln in tests.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
        cell["tests"] = summary[-1].strip("= ") if summary else f"exit {tests.returncode}"
        diff = run([venv / "bin" / "python", ROOT / "tests" / "test_differential.py",
                    "--stimuli", stimuli], cwd=cwd, env=env, logfile=logfile, check=False)
        last = [ln for ln in diff.stdout.splitlines() if ln.strip()]
        cell["differential"] = (
            f"{stimuli} stimuli, identical" if diff.returncode == 0
            else f"diverged ({last[-1][:80] if last else diff.returncode})"
        )
        # the ways in: a small graph on a cluster through each (tests/ways_in_smoke.py)
        smoke = run([venv / "bin" / "python", ROOT / "tests" / "ways_in_smoke.py"], cwd=cwd,
                    env=env, logfile=logfile, check=False)
        ways = [ln.split()[0] for ln in smoke.stdout.splitlines() if ln.endswith(" ok")]
        cell["cluster"] = (
            f"{len(ways)}/5 ways in" if smoke.returncode == 0 else f"failed after {ways}"
        )
        if tests.returncode == 0 and diff.returncode == 0 and smoke.returncode == 0:
            cell["result"] = "pass"
    except Exception as exc:  # an install or a build that failed: that cell fails
        cell["tests"] = f"error: {str(exc).splitlines()[0][:120]}"
    cell["seconds"] = round(time.monotonic() - t0)
    cell["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    log(f"{release} on Python {pyver}: {cell['result']} ({cell['tests']}; "
        f"{cell['differential']}; {cell['cluster']}; {cell['seconds']} s)")
    return cell


def render(matrix: dict) -> str:
    lines = [
        "<!-- Written by `make test-versions` (scripts/test_versions.py) from",
        "     docs/version-matrix.json: edit neither by hand. -->",
        "",
        "**Release x result** (each release in its own virtual environment: fastworker's "
        "parity tests and a differential run against that release's own stock, then a "
        "small graph on a cluster through each of the five ways in):",
        "",
        "| distributed | Python | result | parity tests | differential run | cluster | date |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    releases = matrix.get("releases", {})
    for release in supported_releases():
        c = releases.get(release)
        if c is None:
            lines.append(f"| {release} | | not run | | | | |")
        else:
            lines.append(f"| {release} | {c['python']} | {c['result']} | {c['tests']} | "
                         f"{c['differential']} | {c.get('cluster', '')} | {c['date']} |")
    lines += [
        "",
        f"**Python x result** (on distributed {supported_releases()[-1]}):",
        "",
        "| Python | result | parity tests | differential run | cluster | date |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    pythons = matrix.get("pythons", {})
    for pyver in sorted(set(pythons) | {"3.10", "3.11", "3.12", "3.13"},
                        key=lambda v: tuple(map(int, v.split(".")))):
        c = pythons.get(pyver)
        if c is None:
            lines.append(f"| {pyver} | not run | | | | |")
        else:
            lines.append(f"| {pyver} | {c['result']} | {c['tests']} | {c['differential']} | "
                         f"{c.get('cluster', '')} | {c['date']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", default="all",
                        help="all, oldest, newest, none or a comma-separated list")
    parser.add_argument("--pythons", default="3.10,3.11,3.12,3.13",
                        help="CPython versions to check on the newest release (or none)")
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}",
                        help="the CPython that runs the per-release cells")
    parser.add_argument("--stimuli", type=int, default=10000,
                        help="stimuli of each differential run")
    parser.add_argument("--write", action="store_true",
                        help="merge the results into docs/version-matrix.{json,md}")
    args = parser.parse_args(argv)

    supported = supported_releases()
    chosen = {"all": list(supported), "oldest": [supported[0]], "newest": [supported[-1]],
              "none": []}.get(args.releases)
    if chosen is None:
        chosen = [r.strip() for r in args.releases.split(",") if r.strip()]
        unknown = set(chosen) - set(supported)
        if unknown:
            parser.error(f"not supported: {sorted(unknown)}")
    pythons = [] if args.pythons in ("", "none") else args.pythons.split(",")
    CACHE.mkdir(exist_ok=True)
    t0 = time.monotonic()

    results = {"releases": {}, "pythons": {}}
    default_python = find_python(args.python) or sys.executable
    for release in chosen:
        results["releases"][release] = check_cell(release, args.python, default_python,
                                                  args.stimuli)
    for pyver in pythons:
        python = find_python(pyver)
        if python is None:
            results["pythons"][pyver] = {"result": "no interpreter", "tests": "",
                                         "differential": "", "python": pyver, "date": ""}
            continue
        done = results["releases"].get(supported[-1])
        if pyver == args.python and done is not None:
            results["pythons"][pyver] = done
        else:
            results["pythons"][pyver] = check_cell(supported[-1], pyver, python, args.stimuli)

    print(f"\nmake test-versions: {len(chosen)} releases, {len(pythons)} Pythons, "
          f"{time.monotonic() - t0:.0f} s")
    print("\nrelease      python  result  parity tests / differential run")
    for release, c in results["releases"].items():
        print(f"{release:<12} {c['python']:<7} {c['result']:<7} {c['tests']} / "
              f"{c['differential']} / {c.get('cluster', '')}")
    print(f"\npython  result  (distributed {supported[-1]})")
    for pyver, c in results["pythons"].items():
        print(f"{pyver:<7} {c['result']:<7} {c['tests']} / {c['differential']} / "
              f"{c.get('cluster', '')}")

    if args.write:
        matrix = json.loads(MATRIX_JSON.read_text()) if MATRIX_JSON.exists() else {}
        for kind in ("releases", "pythons"):
            merged = matrix.get(kind, {})
            for name, cell in results[kind].items():
                merged[name] = {k: v for k, v in cell.items() if k not in ("log",)}
            matrix[kind] = merged
        MATRIX_JSON.write_text(json.dumps(matrix, indent=1, sort_keys=True) + "\n")
        MATRIX_MD.write_text(render(matrix))
        print(f"\nwrote {MATRIX_MD.relative_to(ROOT)}")

    failed = [c for c in (*results["releases"].values(), *results["pythons"].values())
              if c["result"] != "pass"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
