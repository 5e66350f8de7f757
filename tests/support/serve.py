"""A real ``pgfeatures serve`` process for the tests that need one: startup, workers, signals,
the database restarting under it, socket-level behaviour, memory.

The launcher is the benchmarks' own (``pgfeatures_bench.harness.serve``, the pgfeatures-bench
distribution): one ``ServeProcess`` for both. Everything else runs the app in-process
(``support.inprocess``).
"""

from __future__ import annotations

from pgfeatures_bench.harness.serve import ServeProcess, alive, children, free_port, rss_bytes

__all__ = ["ServeProcess", "alive", "children", "free_port", "rss_bytes"]
