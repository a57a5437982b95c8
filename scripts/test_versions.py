#!/usr/bin/env python3
"""`make test-versions`: fastworker against every supported distributed release on
every supported CPython.

The cells are every release of fastworker.SUPPORTED_DISTRIBUTED (--releases) times
every CPython of --pythons (3.10-3.13 by default). A pair is skipped by one rule, read
from the packages themselves and not by hand: the ``Requires-Python`` of that
distributed release, or of the dask release it requires, excludes the CPython (read
from each wheel's METADATA, downloaded once with pip). For each other cell this

1. builds a fastworker wheel once per CPython and source state (from a copy of this
   checkout's files, in a cached build environment with Cython), under
   .venv-versions/wheels/, and installs that same wheel into every release's
   environment of that CPython (nothing is compiled per cell);
2. creates (once, then reuses) .venv-versions/<release>-py<X.Y>/ with dask==release,
   distributed==release and the test tools from the package index;
3. runs the parity tests there (tests/test_versions.py and the API, TaskState and
   WorkerState parity tests: each compares fastworker with that release's own stock)
   and a differential run (tests/test_differential.py: the same stimulus streams
   into that release's stock and fastworker), then a small graph on a cluster through
   each way in (tests/ways_in_smoke.py), and records the seconds the cell took;
4. prints the cells and, with --write, merges each into docs/version-matrix.json as
   soon as it is done and renders docs/version-matrix.md (which docs/versions.md
   includes): every cell of the grid, "not run" where no result is recorded.

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
    # fastworker.wire against this release's own TCP comm (bytes and decoding)
    "tests/test_wire.py",
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


# --- which (release, CPython) pairs exist: the packages' own Requires-Python ---------------

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
REQUIRES_CACHE = CACHE / "requires-python.json"


def requires_python(package: str, version: str) -> str:
    """The ``Requires-Python`` of ``package==version``, read from the METADATA of its
    wheel (downloaded once with pip, cached in .venv-versions/requires-python.json)."""
    cache = json.loads(REQUIRES_CACHE.read_text()) if REQUIRES_CACHE.exists() else {}
    key = f"{package}=={version}"
    if key not in cache:
        import zipfile

        where = CACHE / "metadata"
        where.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "-q",
             "--no-deps", "--only-binary=:all:", "--ignore-requires-python", "-d", where, key])
        (wheel,) = [w for w in where.glob("*.whl")
                    if w.name.lower().startswith(f"{package.lower()}-{version}-")]
        with zipfile.ZipFile(wheel) as z:
            (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
            text = z.read(meta).decode()
        found = re.search(r"^Requires-Python:\s*(.+?)\s*$", text, re.M)
        cache[key] = found.group(1) if found else ""
        REQUIRES_CACHE.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    return cache[key]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def allows(spec: str, pyver: str) -> bool:
    """Whether the Requires-Python specifier ``spec`` admits CPython ``pyver`` (X.Y,
    as its X.Y.0 ... X.Y.99 releases: admitted if any of them is)."""
    def clause_ok(clause: str, micro: int) -> bool:
        m = re.fullmatch(r"\s*(~=|==|!=|<=|>=|<|>)\s*([\d.]+)(\.\*)?\s*", clause)
        if m is None:
            raise ValueError(f"cannot read Requires-Python clause {clause!r}")
        op, ver, wildcard = m.groups()
        have = _version_tuple(pyver) + (micro,)
        want = _version_tuple(ver)
        if wildcard:
            same = have[: len(want)] == want
            return same if op == "==" else not same
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if op == "~=":
            return a >= b and have[: len(want) - 1] == want[:-1]
        return {"==": a == b, "!=": a != b, "<=": a <= b, ">=": a >= b, "<": a < b,
                ">": a > b}[op]

    clauses = [c for c in spec.split(",") if c.strip()]
    return any(all(clause_ok(c, micro) for c in clauses) for micro in range(100))


def skip_reason(release: str, pyver: str) -> str | None:
    """Why (release, CPython) is not a pair to test: the Requires-Python of that
    distributed release or of the dask release it requires excludes the CPython."""
    for package, version in (("distributed", release), ("dask", dask_for(release))):
        spec = requires_python(package, version)
        if spec and not allows(spec, pyver):
            return f"{package} {version} requires Python {spec}"
    return None


# --- the matrix: docs/version-matrix.{json,md} ------------------------------------------

def cell_key(release: str, pyver: str) -> str:
    return f"{release} py{pyver}"


def _summary(c: dict | None) -> str:
    if c is None:
        return "not run"
    if c["result"] == "skipped":
        return "skipped"
    return f"{c['result']} ({c['seconds']} s)" if "seconds" in c else c["result"]


def render(matrix: dict) -> str:
    cells = matrix.get("cells", {})
    releases = supported_releases()
    lines = [
        "<!-- Written by `make test-versions` (scripts/test_versions.py) from",
        "     docs/version-matrix.json: edit neither by hand. -->",
        "",
        "**Every supported distributed release on every CPython** (each cell in its own "
        "virtual environment: fastworker's parity tests and a differential run against "
        "that release's own stock, then a small graph on a cluster through each of the "
        "five ways in; the time is the cell's whole check, its environment included when "
        "it had to be made). A pair is *skipped* when the `Requires-Python` of that "
        "distributed release, or of the dask release it requires, excludes the CPython; "
        "*not run* means that no result is recorded for it yet.",
        "",
        "| distributed | " + " | ".join(f"CPython {p}" for p in PYTHONS) + " |",
        "| --- |" + " --- |" * len(PYTHONS),
    ]
    counts: dict[str, int] = {}
    for release in releases:
        row = []
        for pyver in PYTHONS:
            c = cells.get(cell_key(release, pyver))
            word = "not run" if c is None else c["result"]
            counts[word] = counts.get(word, 0) + 1
            row.append(_summary(c))
        lines.append(f"| {release} | " + " | ".join(row) + " |")
    total = len(releases) * len(PYTHONS)
    lines += ["", f"{total} cells: " + ", ".join(
        f"{n} {word}" for word, n in sorted(counts.items())) + "."]
    skipped = [(k, c) for k, c in cells.items() if c["result"] == "skipped"]
    if skipped:
        lines += ["", "Skipped pairs, by the rule above:", ""]
        for key, c in sorted(skipped, key=lambda kc: _order(kc[1])):
            lines.append(f"- distributed {c['release']} on CPython {c['python']}: "
                         f"{c['reason']}")
    ran = [c for c in cells.values() if c["result"] != "skipped"]
    lines += [
        "",
        "Each cell run:",
        "",
        "| distributed | Python | result | parity tests | differential run | cluster | "
        "seconds | date |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in sorted(ran, key=_order):
        lines.append(f"| {c['release']} | {c['python']} | {c['result']} | {c['tests']} | "
                     f"{c['differential']} | {c.get('cluster', '')} | "
                     f"{c.get('seconds', '')} | {c['date']} |")
    return "\n".join(lines) + "\n"


def _order(c: dict) -> tuple:
    releases = supported_releases()
    rank = releases.index(c["release"]) if c["release"] in releases else len(releases)
    return rank, _version_tuple(c["python"])


def _choose_releases(parser, text: str) -> list[str]:
    supported = supported_releases()
    chosen = {"all": list(supported), "oldest": [supported[0]], "newest": [supported[-1]],
              "none": []}.get(text)
    if chosen is None:
        chosen = [r.strip() for r in text.split(",") if r.strip()]
        unknown = set(chosen) - set(supported)
        if unknown:
            parser.error(f"not supported: {sorted(unknown)}")
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", default="all",
                        help="all, oldest, newest, none or a comma-separated list")
    parser.add_argument("--pythons", default=",".join(PYTHONS),
                        help="CPython versions of the cells (comma-separated), or none: "
                             "only --python")
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}",
                        help="the CPython of the cells when --pythons is none")
    parser.add_argument("--stimuli", type=int, default=10000,
                        help="stimuli of each differential run")
    parser.add_argument("--skip-done", action="store_true",
                        help="leave out the cells docs/version-matrix.json already has "
                             "for this source state (to resume an interrupted run)")
    parser.add_argument("--write", action="store_true",
                        help="merge each result into docs/version-matrix.{json,md} as it "
                             "comes")
    args = parser.parse_args(argv)

    chosen = _choose_releases(parser, args.releases)
    pythons = [args.python] if args.pythons in ("", "none") else args.pythons.split(",")
    CACHE.mkdir(exist_ok=True)
    t0 = time.monotonic()
    digest = source_hash(source_files())
    matrix = json.loads(MATRIX_JSON.read_text()) if MATRIX_JSON.exists() else {}
    cells = matrix.setdefault("cells", {})

    results: list[dict] = []
    interpreters = {p: find_python(p) for p in pythons}
    # Release by release, each on every CPython: an interrupted run leaves whole rows.
    for release in chosen:
        for pyver in pythons:
            key = cell_key(release, pyver)
            if args.skip_done and cells.get(key, {}).get("source") == digest:
                continue
            reason = skip_reason(release, pyver)
            if reason is not None:
                cell = {"release": release, "python": pyver, "result": "skipped",
                        "reason": reason}
                log(f"{release} on Python {pyver}: skipped ({reason})")
            elif interpreters[pyver] is None:
                cell = {"release": release, "python": pyver, "result": "no interpreter",
                        "tests": f"no CPython {pyver} found", "differential": "",
                        "cluster": "", "seconds": 0,
                        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
            else:
                cell = check_cell(release, pyver, interpreters[pyver], args.stimuli)
            cell["source"] = digest
            cell.pop("log", None)
            results.append(cell)
            if args.write:
                cells[key] = cell
                MATRIX_JSON.write_text(json.dumps(matrix, indent=1, sort_keys=True) + "\n")
                MATRIX_MD.write_text(render(matrix))

    elapsed = time.monotonic() - t0
    print(f"\nmake test-versions: {len(chosen)} releases x {len(pythons)} Pythons, "
          f"{elapsed:.0f} s")
    print("\nrelease      python  result   seconds  parity tests / differential run / cluster")
    for c in results:
        if c["result"] == "skipped":
            print(f"{c['release']:<12} {c['python']:<7} skipped  {c['reason']}")
        else:
            print(f"{c['release']:<12} {c['python']:<7} {c['result']:<8} {c['seconds']:>7}  "
                  f"{c['tests']} / {c['differential']} / {c.get('cluster', '')}")
    if args.write:
        print(f"\nwrote {MATRIX_MD.relative_to(ROOT)}")

    failed = [c for c in results if c["result"] not in ("pass", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
