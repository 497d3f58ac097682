"""The ``rtk`` command line: one module per command, one error boundary in :mod:`toolkit.cli.app`."""
