"""``python -m csnap_nbd``: the same as the ``csnap-nbd`` command."""

from tools.csnap_nbd import main

raise SystemExit(main())
