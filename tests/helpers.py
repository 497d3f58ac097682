"""What the tests share: tiny real models and their files, the ways to open and run them, and
the checks every test of a refusal makes. Fixtures live in ``conftest.py``; plain helpers here.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.request import EngineRequest
from exporters.prepare import prepare
from toolkit.core.checkpoint import save_checkpoint
from toolkit.core.errors import install_hint
from toolkit.core.models import create_model
from toolkit.core.spec import METADATA_KEY, ModelSpec, Preprocess
from toolkit.usecases.opening import open_engine

# Narrow (a quarter of resnet18's channels): the same graph, a sixteenth of the weights and compute.
TINY_SPEC = ModelSpec(arch="resnet18", num_classes=10, class_names=tuple(f"c{i}" for i in range(10)), stem="small", width=16)
TINY_PRE = Preprocess(input_size=(32, 32), resize=32, crop=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def make_checkpoint(path, spec: ModelSpec = TINY_SPEC, pre: Preprocess = TINY_PRE, seed: int = 0, train=None):
    """Write a real rtk checkpoint of a randomly initialised (BN-calibrated) network."""
    torch.manual_seed(seed)
    model = create_model(spec)
    # A few forward passes in train mode give the BatchNorm layers non-trivial statistics,
    # so eval-mode logits are not degenerate.
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(8, spec.in_chans, *pre.input_size))
    model.eval()
    save_checkpoint(path, model, spec, pre, train or {"epoch": 1, "metrics": {"val_acc": 0.5}})
    return path


#: A two-class model (cat, dog) with a 16 px input: what the guarantee and hostile-input tests run.
PETS_SPEC = ModelSpec(arch="resnet18", num_classes=2, class_names=("cat", "dog"), stem="small", width=16)
PETS_PRE = Preprocess(input_size=(16, 16), resize=16, crop=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def write_pets(root: Path) -> Path:
    """``root/m.pth`` (:data:`PETS_SPEC`) and a labelled folder ``root/imgs/{cat,dog}/one.png``; returns ``root``."""
    make_checkpoint(root / "m.pth", PETS_SPEC, PETS_PRE)
    for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / "imgs" / label).mkdir(parents=True)
        Image.new("RGB", (12, 12), colour).save(root / "imgs" / label / "one.png")
    return root

def opened(model, engine=None, **options):
    """``open_engine`` on a model path (or loaded checkpoint) and an engine name; options as :meth:`EngineRequest.of`."""
    return open_engine(EngineRequest.of(model, engine, **options))


def prepared(model, engine=None, precision=None):
    """The artefact ``engine`` runs for ``model``, made next to it when missing or stale (:func:`exporters.prepare.prepare`)."""
    return prepare(EngineRequest.of(model, engine, precision=precision)).path


def fails_cleanly(result, *phrases, status: int = 1):
    """A command that refused its input as users are promised: the exit status, one ``error:`` line
    last on stderr with every phrase in it, and no traceback."""
    assert result.exit_code == status, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def tensorrt_skip_reason() -> str | None:
    """Why the real-TensorRT tests cannot run here, or ``None`` when they can.

    A broken install (its import raises OSError or RuntimeError for missing CUDA libraries) is a
    reason to skip, like no install at all: those tests verify TensorRT, not the install.
    """
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed ({install_hint('trt')})"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - whatever a broken install raises
        return f"tensorrt is installed but cannot be imported ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and none is present"
    return None


def make_qdq_onnx(onnx_path, out_path, calibration: np.ndarray):
    """Quantize an fp32 ONNX into a QDQ int8 one (per-channel int8 weights, uint8 activations) with
    ONNX Runtime's static quantizer, calibrated batch by batch on ``calibration`` (N, C, H, W)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration.astype(np.float32), max(1, len(calibration) // 4)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    quantize_static(
        str(onnx_path), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    # The rtk record of the fp32 file, now saying int8, as `rtk export --precision int8` writes it:
    # the checkpoint hash it carries keeps the file fresh for prepare().
    model = onnx.load(str(out_path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            record = json.loads(prop.value)
            prop.value = json.dumps({**record, "precision": "int8"})
    onnx.save(model, str(out_path))
    return out_path


def noise_image(rng, height, width, channels=3):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_messy_folder(root: Path) -> Path:
    """A folder of real encoded files of every kind ``rtk predict`` promises to read, plus bad ones."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    (root / "nested").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; a viewer turns it 90° clockwise
    Image.fromarray(noise_image(rng, 30, 50)).save(root / "photo.jpg", exif=exif)
    Image.fromarray(noise_image(rng, 40, 40)).save(root / "UPPER.JPEG", format="JPEG")
    Image.fromarray(noise_image(rng, 36, 36, 1), "L").save(root / "gray.png")
    pal = Image.fromarray(noise_image(rng, 33, 33)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(root / "palette.png", transparency=3)
    Image.fromarray(noise_image(rng, 32, 48, 4), "RGBA").save(root / "rgba.png")
    Image.fromarray((noise_image(rng, 34, 34, 1).astype(np.uint16) * 257)).save(root / "deep16.png")
    frames = [Image.fromarray(noise_image(rng, 32, 32)) for _ in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    Image.fromarray(noise_image(rng, 35, 45)).convert("CMYK").save(root / "cmyk.tiff")
    Image.fromarray(noise_image(rng, 32, 32)).save(root / "pic.webp")
    Image.fromarray(noise_image(rng, 40, 32)).save(root / "pic.bmp")
    Image.fromarray(noise_image(rng, 64, 64)).save(root / "Shout.PNG")
    Image.fromarray(noise_image(rng, 32, 32)).save(root / "nested" / "inner.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("these are not pixels\n")
    png = io.BytesIO()
    Image.fromarray(noise_image(rng, 64, 64)).save(png, "PNG")
    data = png.getvalue()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    mid = len(data) // 2
    (root / "corrupt.png").write_bytes(data[:mid] + bytes(64) + data[mid + 64 :])
    (root / "readme.txt").write_text("not an image by name: ignored\n")
    return root
