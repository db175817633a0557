"""The Python runner of taskraft's language-neutral conformance scenarios; see
:mod:`taskraft.conformance.runner` and ``tests/conformance/README.md``."""
