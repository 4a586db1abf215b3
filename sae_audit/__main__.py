"""``python -m sae_audit``: the same as the ``sae-audit`` command."""

from sae_audit.cli import exit_process, main

exit_process(main())
