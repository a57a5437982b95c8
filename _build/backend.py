"""fastworker's build backend: setuptools', asking for Cython only where it is needed.

A checkout of the repository has the Cython sources only, so building it needs
Cython. An sdist (which has PKG-INFO) ships the generated C as well, so building a
wheel from it needs a C compiler and no Cython: then Cython is not asked for.
"""
import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the hooks not redefined here)

CYTHON = "Cython>=3.0"


def _from_sdist() -> bool:
    return os.path.exists("PKG-INFO")


def get_requires_for_build_wheel(config_settings=None):
    extra = [] if _from_sdist() else [CYTHON]
    return _setuptools.get_requires_for_build_wheel(config_settings) + extra


def get_requires_for_build_editable(config_settings=None):
    extra = [] if _from_sdist() else [CYTHON]
    return _setuptools.get_requires_for_build_editable(config_settings) + extra


def get_requires_for_build_sdist(config_settings=None):
    # the sdist carries the C that Cython generates from the .pyx
    return _setuptools.get_requires_for_build_sdist(config_settings) + [CYTHON]
