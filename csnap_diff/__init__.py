"""csnap_diff: changed blocks between snapshots, as rbd diffs and replication streams.

* :mod:`.source` - which chunks changed (QUERY_CHANGES) and their bytes (through
  :class:`csnap_client.Volume`), as data and zero extents;
* :mod:`.rbd` - Ceph's rbd diff format (write v1, read v1 and v2);
* :mod:`.stream` - the csnap-send stream (CRC32C per record, chained SHA-256, checkpoints);
* :mod:`.state` - csnap-receive's progress file and resume tokens;
* :mod:`.export` / :mod:`.ingest` - making and applying diffs and streams;
* :mod:`.targets` - csnap volumes and files/block devices as targets;
* :mod:`.remote`, :mod:`.cli`, :mod:`.progress` - what the four tools share.

Client side only: never imports csnapd (tests/test_layers.py).
"""
