"""What `import fastworker` says about the distributed release it runs next to."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest

import fastworker
from fastworker.compat import (
    NEWEST_DISTRIBUTED,
    OLDEST_DISTRIBUTED,
    UnsupportedVersionError,
    UnsupportedVersionWarning,
    check_distributed_version,
    is_supported,
)


def test_installed_release_is_supported():
    assert version("distributed") in fastworker.SUPPORTED_DISTRIBUTED
    assert version("dask") in fastworker.SUPPORTED_DASK
    assert fastworker.DISTRIBUTED_SUPPORTED is True
    assert check_distributed_version() is True


def test_version_string():
    assert isinstance(fastworker.__version__, str)
    assert fastworker.__version__.count(".") >= 2


def test_dependency_range_matches_supported_releases():
    """The package metadata asks for the range SUPPORTED_* spans, and the run-time
    check agrees with it on every release of the range and just outside it."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    reqs = {
        r.name: r.specifier
        for r in map(Requirement, requires("fastworker"))
        if r.marker is None
    }
    for name in ("dask", "distributed"):
        assert str(reqs[name]) in (
            f"<={NEWEST_DISTRIBUTED},>={OLDEST_DISTRIBUTED}",
            f">={OLDEST_DISTRIBUTED},<={NEWEST_DISTRIBUTED}",
        )
    for release in fastworker.SUPPORTED_DISTRIBUTED:
        assert release in reqs["distributed"] and is_supported(release)
    for release in ("2024.10.0", "2026.8.1", "2026.9.0"):
        assert release not in reqs["distributed"] and not is_supported(release)


def test_supported_releases_are_ordered_and_distinct():
    releases = fastworker.SUPPORTED_DISTRIBUTED
    keys = [tuple(map(int, r.split("."))) for r in releases]
    assert keys == sorted(set(keys))
    assert (releases[0], releases[-1]) == (OLDEST_DISTRIBUTED, NEWEST_DISTRIBUTED)
    dask_for = fastworker.compat.DASK_FOR_DISTRIBUTED
    assert fastworker.SUPPORTED_DASK == tuple(
        dict.fromkeys(dask_for.get(r, r) for r in releases)
    )


@pytest.mark.parametrize(
    "release", ["2024.1.0", "2024.10.0", "2026.8.1", "2026.9.0", "2026.8.0.dev1"]
)
def test_unsupported_release_warns_and_logs(release, caplog):
    assert not is_supported(release)
    with caplog.at_level(logging.WARNING, logger="distributed.fastworker"):
        with pytest.warns(UnsupportedVersionWarning, match=f"distributed {release} is installed"):
            assert check_distributed_version(release) is False
    assert any(
        r.name == "distributed.fastworker" and "stock worker state machine stays in use" in r.getMessage()
        for r in caplog.records
    )


def test_unsupported_release_strict_raises():
    with pytest.raises(UnsupportedVersionError, match="supports distributed 2024.11.0 to 2026.8.0"):
        check_distributed_version("2023.1.0", strict=True)


def test_distributed_not_installed_message():
    with pytest.raises(UnsupportedVersionError, match=r"\(not installed\)"):
        check_distributed_version("", strict=True)


def test_import_next_to_unsupported_release_warns():
    """A real interpreter whose distributed reports another release: import warns once
    (a Python warning; the ways in log on the logger when a worker is refused)."""
    code = textwrap.dedent(
        """
        import importlib.metadata as md
        import warnings
        real = md.version
        md.version = lambda name: "2099.1.0" if name == "distributed" else real(name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastworker
        print(fastworker.DISTRIBUTED_SUPPORTED)
        ours = [w for w in caught if issubclass(w.category, fastworker.UnsupportedVersionWarning)]
        print(len(ours))
        print(fastworker.TaskState("x"))  # distributed's own class now
        print(ours[0].message)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    lines = out.stdout.split("\n")
    assert lines[:3] == ["False", "1", "<TaskState 'x' released>"]
    assert "distributed 2099.1.0 is installed" in lines[3]
    assert "stock worker state machine stays in use" in lines[3]
