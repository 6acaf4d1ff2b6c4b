"""csnapd's command-line options: one parser, used by the daemon and by its config file.

The configuration file (config.py) checks its keys against this parser, so the
options live here, below both, and neither imports the other.
"""

from __future__ import annotations

import argparse

DEFAULT_LISTEN = "127.0.0.1:4270"
DEFAULT_CONTROL = "/run/csnapd/control.sock"
#: Exit status when csnapd stopped because its store or origin was replaced under it.
EXIT_DEVICE_CHANGED = 3


def build_parser() -> argparse.ArgumentParser:
    """csnapd's argument parser (the config file's keys are its option names)."""
    p = argparse.ArgumentParser(prog="csnapd", description="csnap snapshot metadata server")
    p.add_argument("--store", required=True, help="snapshot store (made by csnap-init)")
    p.add_argument("--origin", required=True, help="origin file or block device")
    p.add_argument("--listen", default=DEFAULT_LISTEN,
                   help=f"TCP address for clients (default {DEFAULT_LISTEN})")
    p.add_argument("--control", default=DEFAULT_CONTROL,
                   help=f"unix control socket, created mode 0600 (default {DEFAULT_CONTROL})")
    p.add_argument("--cache-size", default="64M", help="metadata cache budget (default 64M)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--lease", type=float, default=10.0,
                   help="client lease in seconds: a client that lost contact this long stops "
                        "writing; snapshot create waits at most twice this (default 10)")
    p.add_argument("--on-full", choices=["squash", "fail"], default="squash",
                   help="when a copy-out finds the store full: squash the snapshot(s) that need "
                        "it (lowest priority, then oldest; default) or fail the origin write")
    p.add_argument("--max-inflight", type=int, default=256,
                   help="unanswered requests allowed per connection (default 256)")
    p.add_argument("--max-connections", type=int, default=1024, help="default 1024")
    p.add_argument("--identify-timeout", type=float, default=10.0,
                   help="seconds a new connection has to IDENTIFY (default 10)")
    p.add_argument("--frame-timeout", type=float, default=30.0,
                   help="seconds a started frame has to arrive completely (default 30)")
    p.add_argument("--secret-file", default=None,
                   help="require clients to prove they know the secret in this file "
                        "(HMAC-SHA256 challenge-response; at least 16 bytes)")
    p.add_argument("--tls-cert", default=None, help="serve clients over TLS with this certificate")
    p.add_argument("--tls-key", default=None, help="private key for --tls-cert")
    p.add_argument("--tls-client-ca", default=None,
                   help="require client certificates signed by this CA")
    p.add_argument("--lock-lease", type=float, default=30.0,
                   help="maximum seconds a snapshot read lock is held: after that an origin "
                        "write that waits for it breaks it and the reader re-reads (default 30)")
    return p
