"""``python -m online_gim.services.cli``: the ``online-gim`` command (what ``torchrun`` runs as every
rank of a scaled-out run)."""

import sys

from online_gim.services.cli import main

sys.exit(main())
