"""pgfeatures-bench: the benchmark suite (``pgfeatures bench*``, ``pgfeatures proxy``; ``cli.py`` registers
them through the ``pgfeatures.cli`` entry point group) and the process harness benchmarks and tests share
(``harness``). The core package never imports it."""
