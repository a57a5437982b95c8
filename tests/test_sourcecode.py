"""Source-code checks, as uvloop's tests/test_sourcecode.py: ruff on the Python code
and cython-lint on the Cython code (.pyx, .pxd and the .pxi includes), with the
settings in pyproject.toml. Both come with the ``test`` extra that ``make test``
installs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def _run(*args: str) -> None:
    # cython-lint runs pycodestyle as a program: the interpreter's scripts come first
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff():
    _run(_tool("ruff"), "check", "--no-cache", ".")


def test_cython_lint():
    files = sorted(
        str(path.relative_to(ROOT))
        for pattern in ("fastworker/*.pyx", "fastworker/*.pxd", "fastworker/wsm/*.pxi")
        for path in ROOT.glob(pattern)
    )
    assert any(name.endswith(".pxi") for name in files)
    _run(_tool("cython-lint"), *files)
