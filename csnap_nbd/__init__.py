"""csnap-nbd: an NBD gateway that serves csnap's origin and snapshots as NBD exports.

Layers: ``protocol`` (pure NBD wire format), ``exports`` (csnap volumes, export names and
block status, through csnap_client), ``server`` (asyncio negotiation and transmission).
The command line is ``csnap_nbd/cli.py`` (``csnap-nbd``); docs/nbd.md is the guide.
"""
