"""The logits kept between rounds: pure bookkeeping, no model."""

from __future__ import annotations

import pytest
import torch

from services.trainer.memo import LogitsMemo


def _rows(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[float(len(t)), 0.0] for t in texts])


def test_only_the_texts_it_lacks_are_computed() -> None:
    memo = LogitsMemo()
    asked: list[list[str]] = []

    def compute(texts: list[str]) -> torch.Tensor:
        asked.append(texts)
        return _rows(texts)

    first = memo.logits("v1", ["a", "bb", "a"], compute)
    again = memo.logits("v1", ["ccc", "bb"], compute)
    assert asked == [["a", "bb"], ["ccc"]], "a repeated text is computed once"
    assert first[:, 0].tolist() == [1.0, 2.0, 1.0]
    assert again[:, 0].tolist() == [3.0, 2.0]
    assert memo.missing("v1", ["a", "dddd", "dddd"]) == ["dddd"]
    assert memo.missing("v2", ["a"]) == ["a"], "another version knows nothing yet"


def test_the_oldest_key_is_dropped_whole() -> None:
    memo = LogitsMemo(max_keys=2)
    for key in ("v1", "v2"):
        memo.store(key, ["a"], _rows(["a"]))
    memo.logits("v1", ["a"], _rows)  # v1 used last, so v2 is the oldest
    memo.store("v3", ["a"], _rows(["a"]))
    assert memo.missing("v1", ["a"]) == []
    assert memo.missing("v2", ["a"]) == ["a"]
    assert memo.missing("v3", ["a"]) == []


def test_rows_must_match_the_texts() -> None:
    with pytest.raises(ValueError, match="2 texts but 1 rows"):
        LogitsMemo().store("v1", ["a", "b"], _rows(["a"]))
    with pytest.raises(ValueError, match="max_keys"):
        LogitsMemo(max_keys=0)
