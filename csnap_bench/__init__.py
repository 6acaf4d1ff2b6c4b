"""The benchmark behind ``csnap-bench`` (``tools/csnap_bench.py`` is only its command line).

Modules by concern: ``harness`` (csnapd subprocess, raw-protocol client, closed loop,
/proc counters), ``ideal`` (the ideal server: the Python floor csnapd is compared with),
``workloads`` and ``stages`` (what the clients send, the throughput stages), ``cost``
(csnapd against the ideal server), ``baselines`` (machine, raw I/O), ``scale`` (stores with
many exceptions), ``qemu`` and ``nbd``/``nbdtools`` (the qcow2 peers), ``report`` (targets,
tables, comparison), ``runner`` and ``config``. docs/performance.md explains every workload
and records the results.
"""
