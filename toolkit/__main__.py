"""``python -m toolkit`` runs the ``rtk`` command line."""

from toolkit.cli.app import main

main()
