"""The one engine vocabulary: every command parses engine names with the same grammar."""

from __future__ import annotations

import pytest

from engines.names import ALL_ENGINES, EngineName, parse_engine, parse_engines
from toolkit.core.errors import RtkError


@pytest.mark.parametrize(
    "text, canonical, family, precision",
    [
        ("eager", "eager", "eager", "fp32"),
        ("eager-cl-fp16", "eager-fp16-cl", "eager", "fp16"),
        ("eager-bf16-compile-cl", "eager-bf16-cl-compile", "eager", "bf16"),
        ("ort", "ort", "ort", "fp32"),
        ("ort-fp16", "ort-fp16", "ort", "fp16"),
        ("ort-fp32", "ort", "ort", "fp32"),
        ("ort-cuda-fp16", "ort-cuda-fp16", "ort-cuda", "fp16"),
        ("ort-trt", "ort-trt", "ort-trt", "fp16"),
        ("ort-trt-fp32", "ort-trt-fp32", "ort-trt", "fp32"),
        ("trt", "trt", "trt", "fp16"),
        ("trt-fp16", "trt", "trt", "fp16"),
        ("TRT-FP32", "trt-fp32", "trt", "fp32"),
        ("ov", "ov", "ov", "fp32"),
        ("ov-fp32", "ov", "ov", "fp32"),
        ("ov-bf16", "ov-bf16", "ov", "bf16"),
        ("ov-fp16", "ov-fp16", "ov", "fp16"),
        ("ov-int8", "ov-int8", "ov", "int8"),
        ("ov-latency-int8", "ov-int8-latency", "ov", "int8"),
        ("ov-throughput", "ov-throughput", "ov", "fp32"),
    ],
)
def test_names_parse_to_one_canonical_spelling(text, canonical, family, precision):
    name = parse_engine(text)
    assert str(name) == canonical and name.family == family and name.resolved_precision == precision
    assert parse_engine(str(name)).resolved_precision == precision  # the canonical name asks for the same engine


def test_a_precision_option_applies_only_where_the_name_gives_none():
    assert str(parse_engine("eager", "bf16")) == "eager-bf16"
    assert str(parse_engine("ort", "fp16")) == "ort-fp16"
    assert str(parse_engine("trt", "fp32")) == "trt-fp32"
    assert str(parse_engine("eager-fp16", "bf16")) == "eager-fp16"


def test_what_each_engine_runs_and_needs():
    assert parse_engine("eager-cl").artefact == "checkpoint" and not parse_engine("eager-cl").needs_cuda
    assert parse_engine("ort-fp16").artefact == "onnx" and not parse_engine("ort-fp16").needs_cuda
    assert parse_engine("ort-cuda").needs_cuda and parse_engine("ort-trt").needs_cuda
    assert parse_engine("trt").artefact == "engine" and parse_engine("trt").needs_cuda
    assert parse_engine("eager-graph").cuda_graph and parse_engine("eager-graph").needs_cuda
    assert parse_engine("ov-int8").artefact == "onnx" and not parse_engine("ov-bf16").needs_cuda


@pytest.mark.parametrize(
    "bad, message",
    [
        ("tensorflow", "unknown engine"),
        ("eager-fast", "unknown engine"),
        ("eager-cl-cl", "unknown engine"),
        ("ort-cpu", "unknown engine"),
        ("eager-fp16-bf16", "two precisions"),
        ("ort-cl", "applies to eager only"),
        ("trt-compile", "applies to eager only"),
        ("ort-bf16", "runs fp32, fp16 or int8, not bf16"),
        ("trt-bf16", "runs fp32, fp16 or int8, not bf16"),
        ("ov-cuda", "unknown engine"),
        ("ov-cl", "applies to eager only"),
        ("eager-latency", "applies to ov only"),
        ("ort-throughput", "applies to ov only"),
        ("ov-latency-throughput", "two performance hints"),
        ("ov-bf16-int8", "two precisions"),
        ("", "unknown engine"),
    ],
)
def test_names_outside_the_grammar_are_refused_with_the_reason(bad, message):
    with pytest.raises(RtkError, match=message):
        parse_engine(bad)


def test_a_precision_option_the_runtime_lacks_is_refused():
    with pytest.raises(RtkError, match="ort engine runs fp32, fp16 or int8, not bf16"):
        parse_engine("ort", "bf16")


def test_lists_expand_all_and_drop_repeats_in_order():
    names = parse_engines("ort, all,ort")
    assert str(names[0]) == "ort" and [str(n) for n in names[1:]] == [a for a in ALL_ENGINES if a != "ort"]
    assert [str(n) for n in parse_engines(["eager", "eager-fp32", "trt-fp16", "trt"])] == ["eager", "trt"]
    with pytest.raises(RtkError, match="no engine named"):
        parse_engines(" , ")


def test_names_round_trip_through_the_dataclass():
    name = EngineName("eager", None, "fp16", channels_last=True, cuda_graph=True)
    assert str(name) == "eager-fp16-cl-graph" and parse_engine(str(name)) == name
