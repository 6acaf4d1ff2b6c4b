"""csnap-bench internals: the server harness, the raw protocol client, the scale store builder.

The command line is ``tools/csnap_bench.py`` (``csnap-bench``); docs/performance.md explains
every workload and records the results.
"""
