"""Sphinx configuration for the fastworker docs (``make docs``; checked by tests/test_docs.py)."""
from __future__ import annotations

import os
import re

_here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_here, "..", "fastworker", "_version.py")) as f:
    # read, not imported: the docs build needs no compiled extension
    release = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read()).group(1)

project = "fastworker"
author = "fastworker developers"
copyright = "fastworker developers"
version = release

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
# benchmark-run/ holds one run's results; its table.md is included by benchmarks.md
# version-matrix.md (make test-versions) is included by versions.md
exclude_patterns = [
    "_build", "benchmark-run", "benchmark-inline", "benchmark-pool", "dispatch-run", "dispatch-pool", "dispatch-wire", "dispatch-wire-many", "dispatch-final", "dispatch-fair", "dispatch-16", "dispatch-16-alone", "dispatch-4-alone", "dispatch-1x2-alone", "dispatch-1x2-read-ahead", "dispatch-1x2-spill", "dispatch-1x2-xeon", "dispatch-1x2-array", "version-matrix.md",
    "Thumbs.db", ".DS_Store",
]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"fastworker {release}"
html_theme_options = {
    "description": "A compiled drop-in for Dask distributed's worker state machine",
    "page_width": "1180px",
}
