"""What an option may hold: one set of rules, checked alike by the command line and by the options objects.

A :class:`Number` says what a numeric option accepts: a whole or a real number, always finite
(``nan`` and ``inf`` parse as floats but pass every comparison silently), within a range. The
bounds of whole numbers are the widest the libraries below rtk take: a count (images, epochs,
threads, iterations) fits a signed 32-bit integer, which is what ONNX Runtime's and TensorRT's
dimensions and thread counts and ``torch.set_num_threads`` hold; a seed fits an unsigned 32-bit
one, which is what NumPy's generators take. A file name given as a flag (``rtk bench --name``)
is checked by :func:`check_name`.

The CLI (:mod:`toolkit.cli.options`) attaches a rule to a flag, so the value is refused while the
command line is parsed and the rule is shown in ``--help``; the options dataclasses
(``PredictOptions``, ``TrainOptions``, ``BenchOptions``…) check the same rule on their fields, so
a Python caller gets the same sentence. Either way a value outside its rule, or options that
exclude each other, is a :class:`UsageError`, which the CLI turns into exit status 64.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from toolkit.core.errors import RtkError

#: The largest count any runtime below rtk takes (a signed 32-bit integer).
INT32_MAX = 2**31 - 1
#: The largest seed NumPy's generators take (an unsigned 32-bit integer).
UINT32_MAX = 2**32 - 1


class UsageError(RtkError):
    """A value an option cannot hold, or options that exclude each other: the command line is
    wrong, before any work (the CLI's exit status 64, where other user errors are 1)."""


@dataclass(frozen=True)
class Number:
    """The values a numeric option accepts.

    Attributes:
        kind: ``int`` (a whole number) or ``float`` (any finite real number).
        low, high: the bounds, ``None`` for none.
        open_low, open_high: the bound itself is excluded (``> 0`` rather than ``≥ 0``).
        why: why the bound is what it is, added to the refusal.
    """

    kind: type = int
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    why: str = ""

    def check(self, value: Any, name: str) -> Any:
        """``value`` when it follows the rule (``None`` always does: the option was not given).

        Args:
            value: the option's value.
            name: the flag, for the message (``--top-k``).

        Raises:
            UsageError: not a number of the right kind, not finite, or out of range.
        """
        if value is None:
            return None
        whole = isinstance(value, int) and not isinstance(value, bool)
        if self.kind is int and not whole:
            raise UsageError(f"{name} must be a whole number, got {value!r}")
        if not whole and (isinstance(value, bool) or not isinstance(value, float)):
            raise UsageError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, got {value}")
        too_low = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if too_low or too_high:
            why = f": {self.why}" if self.why else ""
            raise UsageError(f"{name} must be {self.describe(shown=value)}, got {value}{why}")
        return value

    def describe(self, shown: Any = None) -> str:
        """The rule in words ("at least 1", "at least 0 and below 1"); a 32-bit integer's upper
        bound only when it matters, i.e. when ``shown`` is beyond it."""
        parts = []
        if self.low is not None:
            parts.append(f"{'more than' if self.open_low else 'at least'} {_number(self.low)}")
        if self.high is not None and (self.high != INT32_MAX or (shown is not None and shown > self.high)):
            parts.append(f"{'below' if self.open_high else 'at most'} {_number(self.high)}")
        return " and ".join(parts) or "a finite number"

    def brief(self) -> str:
        """The rule as ``--help`` shows it: ``≥ 1``, ``> 0``, ``0 ≤ x < 1``, ``0 ≤ N ≤ 4294967295``."""
        var = "N" if self.kind is int else "x"
        high = None if self.high == INT32_MAX else self.high
        low_sign, high_sign = ("<" if self.open_low else "≤"), ("<" if self.open_high else "≤")
        if self.low is not None and high is not None:
            return f"{_number(self.low)} {low_sign} {var} {high_sign} {_number(high)}"
        if self.low is not None:
            return f"{'>' if self.open_low else '≥'} {_number(self.low)}"
        if high is not None:
            return f"{high_sign} {_number(high)}"
        return "finite"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


#: How many of something: images per batch, epochs, threads, iterations, replicas.
COUNT = Number(int, 1, INT32_MAX)
#: A count that may be zero: decoding threads (0 decodes in the calling thread), a delay.
COUNT_OR_ZERO = Number(int, 0, INT32_MAX)
#: A seed: NumPy's generators take 0..2**32-1 (torch takes more, so NumPy's range is the rule).
SEED = Number(int, 0, UINT32_MAX)
#: A real number above zero: a learning rate, a duration.
POSITIVE = Number(float, 0, open_low=True)
#: A real number of zero or more: a tolerance, a warm-up, a weight decay.
NON_NEGATIVE = Number(float, 0)
#: A fraction from 0 to 1: an agreement or an accuracy.
FRACTION = Number(float, 0, 1)
#: A fraction held out of something, below 1 so that something is left: a validation split, label smoothing.
PART = Number(float, 0, 1, open_high=True)
#: A cosine similarity.
COSINE = Number(float, -1, 1)
#: Images in a training batch (and per split with ``--max-samples``): BatchNorm needs two.
TRAINING_BATCH = Number(int, 2, INT32_MAX, why="BatchNorm normalises a training batch by its own statistics, which one image cannot give")
#: ``--max-drop``: points of top-1 accuracy (or of top-1 disagreement, in %) the int8 files may lose.
MAX_DROP = Number(float, 0, 100, why="points of top-1 accuracy, so 0.5 is half a point")
#: ``--builder-optimization-level``: TensorRT's levels.
OPTIMIZATION_LEVEL = Number(int, 0, 5)
#: A workspace limit in bytes (no 32-bit bound: GPUs hold more).
WORKSPACE = Number(int, 1)


def check_name(name: str | None, flag: str) -> str | None:
    """A name a command turns into a file or folder name (``rtk bench --name``, ``rtk triton --name``):
    one visible name, never a path, so nothing is written outside the folder the user chose.

    Raises:
        UsageError: empty, holding a path separator, ``.``/``..`` or a leading dot, or a control character.
    """
    if name is None:
        return None
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not name or any(sep in name for sep in seps):
        raise UsageError(f"{flag} {name!r} must be a name, not a path: one file or folder name without / or \\")
    if name.startswith(".") or any(ord(ch) < 32 for ch in name):
        raise UsageError(f"{flag} {name!r} must not start with a dot or hold control characters")
    return name

