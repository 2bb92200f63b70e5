"""The depth bound applied to request bodies before anything decodes them, on valid and on broken JSON."""

from __future__ import annotations

import msgspec
import pytest

from service.api.json_depth import json_depth_exceeds


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"1", 0),
        (b'{"a": [1]}', 2),
        (b'[[], [[]], {"x": {}}]', 3),
        (b'{"text": "[[[[[[[[[["}', 1),  # brackets inside strings nest nothing
        (b"[" * 40 + b"]" * 40, 40),
        (b"[" * 40, 40),  # never closed: the decoder still goes 40 deep before it finds the end missing
        (b"[[[1]]", 3),
        (b"]]]][[", 2),
    ],
)
def test_the_bound_is_exceeded_exactly_past_the_depth(body: bytes, depth: int) -> None:
    assert not json_depth_exceeds(body, depth)
    if depth:
        assert json_depth_exceeds(body, depth - 1)


@pytest.mark.parametrize("body", [b"[" * 5_000, b'{"a":' * 5_000, b"[" * 5_000 + b"]"])
def test_unbalanced_bodies_too_deep_for_the_decoder_are_caught(body: bytes) -> None:
    # Unchecked, these take the decoder past Python's recursion limit (a 500), not to a decode error. (On broken
    # JSON the bound may count deeper than the decoder would get; either way the client gets a 4xx.)
    with pytest.raises(RecursionError):
        msgspec.json.decode(body)
    assert json_depth_exceeds(body, 64)
