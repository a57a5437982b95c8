"""The README's examples run as written and print what their comments say."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.S | re.M)


def blocks(language):
    return [
        textwrap.dedent(body)
        for indent, lang, body in FENCE.findall(README.read_text())
        if lang == language
    ]


def expected_lines(code):
    """What `print(...)  # comment` lines promise: the comment up to a ': ' remark."""
    out = []
    for line in code.splitlines():
        m = re.match(r"\s*print\(.*\)\s+# (.*)$", line)
        if m and not m.group(1).startswith("per "):
            out.append(m.group(1).split(": ")[0].strip())
    return out


PYTHON_BLOCKS = blocks("python")


def test_readme_has_the_examples():
    text = "\n".join(PYTHON_BLOCKS)
    for way in ("FastWorkerPlugin()", "worker_class=fastworker.Worker",
                "WorkerStateClass=fastworker.WorkerState", "SUPPORTED_DISTRIBUTED"):
        assert way in text
    (shell,) = blocks("sh")
    assert "--preload fastworker" in shell and "--worker-class fastworker.Worker" in shell


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=lambda c: c.splitlines()[-1][:40])
def test_readme_python_block(code, tmp_path):
    # Run as a script file: LocalCluster's worker processes re-import __main__.
    script = tmp_path / "example.py"
    script.write_text('if __name__ == "__main__":\n' + textwrap.indent(code, "    "))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout.splitlines()
    expected = expected_lines(code)
    assert expected, "an example without a promised output tests nothing"
    assert [line for line in printed if line in expected] == expected, printed
    if "client.run(fastworker.status)" in code:
        assert printed[0].count("'fastworker': True") == 2, printed[0]
