"""Test infrastructure shared by several test modules (not tests themselves).

- ``server_data``: a small schema of mixed-type feature tables with its ground truth;
- ``serve``: ``ServeProcess``, a real ``pgfeatures serve`` subprocess, and ``/proc`` helpers (re-exported
  from pgfeatures-bench's ``pgfeatures_bench.harness.serve``: one launcher for benchmarks and tests);
- ``inprocess``: the app run in this process (lifespan included) behind an HTTP client;
- ``proxy``: a TCP proxy that can stop, restart and hang, to take the database away.
"""
