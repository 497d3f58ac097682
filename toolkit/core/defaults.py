"""What a command does when no flag says otherwise, for the figures a user sees in ``--help``.

These live apart from the code that uses them (the benchmark harness, the int8 exporter) so that
``rtk --help`` can show them without importing that code and the numerical libraries below it.
"""

from __future__ import annotations

#: Batch sizes ``rtk bench`` sweeps when none are given, by device: a GPU is measured up to the batches it is bought for.
DEFAULT_BATCH_SIZES = {"cpu": (1, 8), "cuda": (1, 8, 32, 128)}
#: Calibration images of an int8 export when ``--calib-samples`` is not given.
DEFAULT_CALIB_SAMPLES = 256
