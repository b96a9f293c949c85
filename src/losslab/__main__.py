"""``python -m losslab`` runs the ``losslab`` command."""

from losslab.cli import main

main()
