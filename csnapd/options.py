"""csnapd's command-line options: one parser, used by the daemon and by its config file.

The configuration file (config.py) checks its keys against this parser, so the
options live here, below both, and neither imports the other.
"""

from __future__ import annotations

import argparse

from csnap_client.version import add_version_option

DEFAULT_LISTEN = "127.0.0.1:4270"
DEFAULT_CONTROL = "/run/csnapd/control.sock"
#: The default leader lease of --etcd mode, in seconds.
DEFAULT_HA_LEASE = 3.0
#: Exit status when csnapd stopped because its store or origin was replaced under it.
EXIT_DEVICE_CHANGED = 3

EPILOG = f"""\
Exit status: 0 stopped cleanly (SIGTERM, SIGINT or 'csnapctl shutdown'; the store is
marked clean); 1 cannot start or serve (the message says why: a missing or wrong device,
a store that is not initialised or needs csnap-check, an address in use); 2 usage or
configuration error; {EXIT_DEVICE_CHANGED} stopped because the store or origin was replaced under it
(find out what happened to the device before starting it again).

Without --control, csnapd creates {DEFAULT_CONTROL}, which needs root (or a writable
/run/csnapd); as another user give --control PATH, e.g. --control ./csnapd.sock.
See docs/operations.md for running, sizing and recovery."""


def build_parser() -> argparse.ArgumentParser:
    """csnapd's argument parser (the config file's keys are its option names)."""
    p = argparse.ArgumentParser(prog="csnapd", description="csnap snapshot metadata server: "
                                "owns the store's metadata and serves clients over TCP.",
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("--store", required=True, metavar="PATH",
                   help="snapshot store file or block device (made by csnap-init)")
    p.add_argument("--origin", required=True, metavar="PATH",
                   help="origin file or block device (the one the store was made for)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"TCP address for clients (default {DEFAULT_LISTEN}; 0.0.0.0:4270 "
                        "for clients on other hosts)")
    p.add_argument("--control", default=DEFAULT_CONTROL, metavar="PATH",
                   help=f"unix control socket for csnapctl, created mode 0600 (default "
                        f"{DEFAULT_CONTROL})")
    p.add_argument("--cache-size", default="64M", metavar="SIZE",
                   help="metadata cache budget, K/M/G suffixes (default 64M)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"],
                   help="least important log lines shown (default info)")
    p.add_argument("--lease", type=float, default=10.0, metavar="SECONDS",
                   help="client lease in seconds: a client that lost contact this long stops "
                        "writing; snapshot create waits at most twice this (default 10)")
    p.add_argument("--on-full", choices=["squash", "fail"], default="squash",
                   help="when a copy-out finds the store full: squash the snapshot(s) that need "
                        "it (lowest priority, then oldest; default) or fail the origin write")
    p.add_argument("--max-inflight", type=int, default=256, metavar="N",
                   help="unanswered requests allowed per connection (default 256)")
    p.add_argument("--max-connections", type=int, default=1024, metavar="N",
                   help="client connections at once; more are refused (default 1024)")
    p.add_argument("--identify-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds a new connection has to IDENTIFY (default 10)")
    p.add_argument("--frame-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds a started frame has to arrive completely (default 30)")
    p.add_argument("--secret-file", default=None, metavar="PATH",
                   help="require clients to prove they know the secret in this file "
                        "(HMAC-SHA256 challenge-response; at least 16 bytes)")
    p.add_argument("--tls-cert", default=None, metavar="PATH",
                   help="serve clients over TLS with this certificate (PEM)")
    p.add_argument("--tls-key", default=None, metavar="PATH",
                   help="private key for --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", default=None, metavar="PATH",
                   help="require client certificates signed by this CA (PEM)")
    p.add_argument("--lock-lease", type=float, default=30.0, metavar="SECONDS",
                   help="maximum seconds a snapshot read lock is held: after that an origin "
                        "write that waits for it breaks it and the reader re-reads (default 30)")
    ha = p.add_argument_group(
        "high availability", "active/standby csnapd nodes on one store, elected through etcd "
        "(docs/operations.md, 'Two nodes with etcd')")
    ha.add_argument("--etcd", default=None, metavar="URL[,URL...]",
                    help="join the store's leader election on this etcd cluster (client URLs, "
                         "e.g. http://10.0.0.5:2379,http://10.0.0.6:2379); without it csnapd "
                         "serves alone, guarded by the store's flock")
    ha.add_argument("--node", default=None, metavar="NAME",
                    help="this node's name in the election (default: the host name)")
    ha.add_argument("--ha-lease", type=float, default=DEFAULT_HA_LEASE, metavar="SECONDS",
                    help="leader lease in etcd: a leader that cannot renew it within this "
                         "stops writing, and a standby takes over about this long after a "
                         f"leader died (default {DEFAULT_HA_LEASE:g}; etcd may round it up)")
    ha.add_argument("--advertise", default=None, metavar="HOST:PORT",
                    help="the address clients reach this node at, announced while it leads "
                         "(default: --listen, with this host's name for 0.0.0.0)")
    return p
