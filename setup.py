"""The one C extension; everything else about the package is in pyproject.toml.

services.ingest._fastpath, the compiled builder of ingest documents, needs a C compiler
and OpenSSL's headers (Debian: gcc, libssl-dev; ``make system-deps``); SHA-256 comes
from OpenSSL's libcrypto, the implementation hashlib uses. Without them the install
still succeeds and ingest builds every document in Python, about a third as fast;
``tests/ingest/test_fastpath.py`` fails so that CI never ships that by accident.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "services.ingest._fastpath",
            sources=["services/ingest/_fastpath.c"],
            depends=["services/ingest/_nfc_unsafe.h"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
