"""``python -m sae_audit``: the same as the ``sae-audit`` command."""

import sys

from sae_audit.cli import main

sys.exit(main())
