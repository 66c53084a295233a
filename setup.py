"""Extension building only; everything else is in pyproject.toml."""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - build dependency declared in pyproject
    raise SystemExit("building cblb needs Cython: pip install Cython") from exc

CFLAGS = ["-O3", "-Wall", "-Wextra", "-Wno-unused-function", "-Wno-unreachable-code"]

extensions = [
    Extension(
        "cblb._blockhash",
        sources=["ext/_blockhash.pyx"],
        libraries=["xxhash"],
        extra_compile_args=CFLAGS,
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
