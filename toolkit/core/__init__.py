"""The core every layer may import: specs, checkpoints, models, data, images, files, errors, console.

Nothing here imports ``engines``, ``exporters``, ``benchmarks``, the use-cases or the CLI.
"""
