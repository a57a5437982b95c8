"""Build the compiled units of fastworker.

Every ``fastworker/*.pyx`` becomes one extension module; Cython runs at build time
and the generated C is never committed to git. The sdist ships that C (``make dist``),
so a build from the sdist (recognised by its PKG-INFO) compiles it without Cython.
Build options come from the environment:

- ``FASTWORKER_ANNOTATE=1``  write ``cython -a`` HTML next to each .pyx
- ``FASTWORKER_DEBUG=1``     keep line numbers/asserts, no -O3 (for profilers and gdb)
- ``FASTWORKER_PROFILE=1``   Cython ``profile``/``linetrace`` hooks for cProfile
"""
import os
from glob import glob

from setuptools import Extension, setup


def flag(name):
    return os.environ.get(name, "") not in ("", "0", "false", "no")


debug = flag("FASTWORKER_DEBUG")
profile = flag("FASTWORKER_PROFILE")

directives = {
    "language_level": 3,
    "embedsignature": True,
    "profile": profile,
    "linetrace": profile,
}
macros = [("CYTHON_TRACE", "1")] if profile else []
compile_args = ["-O0", "-g"] if debug else ["-O3"]

pyx_files = sorted(glob(os.path.join("fastworker", "*.pyx")))
# An sdist carries the generated C: compile it as it is, without Cython.
from_sdist = os.path.exists("PKG-INFO") and all(
    os.path.exists(path[:-4] + ".c") for path in pyx_files
)


def extension(path):
    return Extension(
        f"fastworker.{os.path.splitext(os.path.basename(path))[0]}",
        [path],
        define_macros=macros,
        extra_compile_args=compile_args,
    )


if from_sdist:
    ext_modules = [extension(path[:-4] + ".c") for path in pyx_files]
else:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [extension(path) for path in pyx_files],
        compiler_directives=directives,
        annotate=flag("FASTWORKER_ANNOTATE"),
    )

setup(ext_modules=ext_modules, zip_safe=False)
