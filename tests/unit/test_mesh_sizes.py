"""mesh.cluster.sizes: override parsing, per-type learned means, and the order of size sources."""

from __future__ import annotations

import pytest

from mesh.cluster.sizes import MAX_SIZE_OVERRIDE, TypeSizes, parse_size_override, planned_size
from mesh.errors import InvalidRequest


def test_parse_size_override() -> None:
    assert parse_size_override(None) == 0 and parse_size_override(" ") == 0
    assert parse_size_override("1048576") == 1 << 20
    assert parse_size_override(str(MAX_SIZE_OVERRIDE)) == MAX_SIZE_OVERRIDE
    for bad in ("²", "１２", "-1", "1.5", "1e9", "10GB", "0", str(MAX_SIZE_OVERRIDE + 1), "x" * 1000):
        with pytest.raises(InvalidRequest, match="mm-model-size") as ei:
            parse_size_override(bad)
        assert ei.value.grpc_code.name == "INVALID_ARGUMENT" and len(ei.value.message) < 200


def test_type_means_need_samples_and_follow_removals() -> None:
    sizes = TypeSizes(min_samples=3)
    sizes.observe("onnx", 100)
    sizes.observe("onnx", 200)
    assert sizes.predict("onnx") == 0  # two samples are not enough
    sizes.observe("onnx", 600)
    assert sizes.predict("onnx") == 300
    sizes.observe("onnx", 0)  # unmeasured: ignored
    assert sizes.predict("onnx") == 300
    sizes.forget("onnx", 600)
    assert sizes.predict("onnx") == 0
    sizes.forget("onnx", 100)
    sizes.forget("onnx", 200)
    assert len(sizes) == 0 and sizes.predict("other") == 0


def test_types_are_bounded() -> None:
    sizes = TypeSizes(max_types=3, min_samples=1)
    for i in range(10):
        sizes.observe(f"t{i}", 10 + i)
    assert len(sizes) == 3
    assert [sizes.predict(f"t{i}") for i in (6, 7, 8, 9)] == [0, 17, 18, 19]
    sizes.observe("t7", 27)  # recently updated types are kept
    sizes.observe("new", 5)
    assert sizes.predict("t7") == 22 and sizes.predict("t8") == 0


def test_order_of_sources() -> None:
    assert planned_size(override=5, measured=4, runtime_predicted=3, type_mean=2, default=1) == 5
    assert planned_size(measured=4, runtime_predicted=3, type_mean=2, default=1) == 4
    assert planned_size(runtime_predicted=3, type_mean=2, default=1) == 3
    assert planned_size(type_mean=2, default=1) == 2
    assert planned_size(default=1) == 1
