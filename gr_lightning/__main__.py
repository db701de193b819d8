"""``python -m gr_lightning`` runs the CLI."""

from gr_lightning.cli import main

main()
