"""The ``pgfeatures`` command line: one module per command group, each a thin layer over the library.

- ``main``: the parser, the dispatch and the one error handler (exit codes in ``common``);
- ``common``: the shared options, flags derived from settings dataclasses, the extras a command
  needs, where the database is; ``output``: stdout/stderr, ``--json``, tables with or without rich;
- ``db`` (db), ``schema`` (init), ``read`` (get), ``write`` (load, expire), ``serve`` (serve),
  ``doctor`` (doctor, warmup), ``demo`` (demo); ``bench*`` and ``proxy`` come from pgfeatures-bench
  (``pgfeatures_bench.cli``, through the ``pgfeatures.cli`` entry point group).

``python -m pgfeatures.cli`` and the ``pgfeatures`` entry point (``pgfeatures.cli:main``) run it.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
