"""The benchmark suite: timing loops, network-distance proxy, report."""
