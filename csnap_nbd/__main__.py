"""``python -m csnap_nbd``: the same as the ``csnap-nbd`` command."""

from csnap_nbd.cli import main

raise SystemExit(main())
