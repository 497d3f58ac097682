"""The eager engine on a real checkpoint: shapes, dtypes and bad input."""

import numpy as np
import pytest
import torch

import engines
from toolkit.errors import RtkError


def test_eager_engine_matches_model(tiny_checkpoint):
    from toolkit.checkpoint import load_model

    model, _ = load_model(tiny_checkpoint)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with engines.load(tiny_checkpoint) as engine:
        out = engine(x)
        assert engine.name == "eager" and out.dtype == np.float32 and out.shape == (3, 10)
        with torch.no_grad():
            np.testing.assert_array_equal(out, model(torch.from_numpy(x)).numpy())
        np.testing.assert_array_equal(engine(torch.from_numpy(x)), out)


@pytest.mark.parametrize(
    "batch, message",
    [
        (np.zeros((3, 32, 32), np.float32), "4 dimensions"),
        (np.zeros((1, 1, 32, 32), np.float32), "expects inputs of shape"),
        (np.zeros((1, 3, 32, 32), np.float64), "float32"),
        ([1, 2, 3], "numpy array or torch tensor"),
    ],
)
def test_bad_batches_are_rejected(tiny_checkpoint, batch, message):
    with engines.load(tiny_checkpoint) as engine, pytest.raises(RtkError, match=message):
        engine(batch)
