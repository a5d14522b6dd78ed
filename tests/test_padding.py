"""isdaa.padding.pad_batch against hand-written tensors."""

import pytest
import torch

from isdaa.padding import pad_batch


def test_right_padding_with_response_mask():
    """[5, 6, 7] (prompt 1) and [8] (prompt 1, empty response), pad 0: width 3, responses at [1, 2] and none."""
    b = pad_batch([[5, 6, 7], [8]], 0, prompt_lens=[1, 1])
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["response_mask"].tolist() == [[False, True, True], [False, False, False]]
    assert b["input_ids"].dtype == b["attention_mask"].dtype == torch.long and b["response_mask"].dtype == torch.bool


def test_left_padding_for_generation():
    """[1, 2], [3] and an empty prompt, pad 9: every row ends at the last column."""
    b = pad_batch([[1, 2], [3], []], 9, side="left", prompt_lens=[1, 0, 0])
    assert b["input_ids"].tolist() == [[1, 2], [9, 3], [9, 9]]
    assert b["attention_mask"].tolist() == [[1, 1], [0, 1], [0, 0]]
    assert b["response_mask"].tolist() == [[False, True], [False, True], [False, False]]
    assert "response_mask" not in pad_batch([[1]], 0)
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")
