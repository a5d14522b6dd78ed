"""Fuzzing the two front doors with invalid input (test_losses.py fuzzes finiteness on valid input):
the loss gives a result or a clear ValueError/TypeError, never another exception; the dataset parser
parses a row or raises a DataError naming it, never another exception."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isdaa.data import DataError, load_rows, tokenize_pref
from isdaa.losses import METHODS, preference_loss

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
EXTREME = st.sampled_from([0.0, -1.0, -1e-30, -1e4, -3e38, 3e38, float("nan"), float("inf"), float("-inf")])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool])


@st.composite
def loss_inputs(draw):
    n = draw(st.integers(1, 4))
    shapes = [(n,)] * 4
    if draw(st.booleans()):  # one wrong shape: 0-d, 2-d or another length
        shapes[draw(st.integers(0, 3))] = draw(st.sampled_from([(), (n, 1), (n + 1,), (1, n)]))
    dtype = draw(DTYPES)
    tensors = [torch.tensor(draw(st.lists(EXTREME, min_size=math.prod(s), max_size=math.prod(s))),
                            dtype=torch.float64).reshape(s).to(dtype) for s in shapes]
    beta = draw(st.one_of(st.sampled_from([0.1, 0.0, -1.0, float("nan"), float("inf"), True, "0.1", None]),
                          st.floats(allow_nan=True, allow_infinity=True)))
    kw = {}
    if draw(st.booleans()):
        kw["chosen_lengths"] = torch.tensor([draw(st.integers(-2, 5)) for _ in range(n)])
        kw["rejected_lengths"] = torch.tensor([draw(st.integers(-2, 5)) for _ in range(n)])
    if draw(st.booleans()):
        kw["behavior_chosen_logps"] = torch.full((n,), draw(EXTREME))
        if draw(st.booleans()):
            kw["behavior_rejected_logps"] = torch.full((n,), draw(EXTREME))
    if draw(st.booleans()):
        kw[draw(st.sampled_from(["is_clip", "is_self_normalize", "rpo_eta", "chipo_rmax", "bogus_option"]))] = \
            draw(st.sampled_from([0.0, -1.0, 1.0, float("nan"), True, "x", None]))
    return draw(st.sampled_from([*METHODS, "DPO", "is-", ""])), beta, tensors, kw


@FAST
@given(loss_inputs())
def test_loss_front_door_gives_a_result_or_a_clear_error(args):
    method, beta, tensors, kw = args
    try:
        out = preference_loss(method, beta, *tensors, **kw)
    except (ValueError, TypeError) as err:
        assert str(err)  # a message, not an empty error
        return
    given = [t for t in [*tensors, *kw.values()] if torch.is_tensor(t) and t.is_floating_point()]
    expected = torch.float64 if any(t.dtype == torch.float64 for t in given) else torch.float32
    assert out.loss.dtype == expected and out.loss.dim() == 0  # float32, float64 for float64 inputs
    inputs_finite = all(torch.isfinite(t.float()).all() for t in tensors) and all(
        torch.isfinite(v.float()).all() for v in kw.values() if torch.is_tensor(v))
    if not inputs_finite:  # documented: non-finite in, non-finite may come out; the trainer skips the step
        return
    small = all(t.float().abs().max() <= 1e4 for t in tensors if t.numel())
    if small and tensors[0].dtype.is_floating_point:
        assert torch.isfinite(out.loss), (method, beta, tensors, kw)


@pytest.mark.parametrize("method", ["dpo", "is-dpo"])
def test_loss_empty_batch_is_a_clear_error(method):
    z = torch.zeros(0)
    with pytest.raises(ValueError, match="empty"):
        preference_loss(method, 0.1, z, z, z, z)


# ---------------------------------------------------------------- the dataset parser

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]) | JSON,
                                 "content": st.text(max_size=10) | JSON})
FIELD = st.one_of(st.text(max_size=12), st.just("good yes"), st.lists(MESSAGE, max_size=3), JSON)
KEYS = ["prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps", "chosen_logps", "rejected_logps"]
ROW = st.dictionaries(st.sampled_from([*KEYS, "extra"]), st.one_of(FIELD, st.floats(), st.integers()), max_size=7)


@FAST
@given(rows=st.lists(st.one_of(ROW, JSON), min_size=1, max_size=3))
def test_dataset_rows_parse_or_name_the_row(tok, rows):
    try:
        out = tokenize_pref(rows, tok, 32, 16, drop_identical=False)
    except DataError as err:
        assert str(err).startswith("row ") and ": " in str(err), str(err)
        return
    assert len(out) == len(rows)
    for e in out:
        assert e["chosen_ids"] and e["rejected_ids"]
        assert all(math.isfinite(e[k]) and e[k] <= 1e-4 for k in KEYS[3:] if k in e)


@FAST
@given(data=st.binary(max_size=60) | st.lists(JSON, max_size=3).map(lambda r: "\n".join(map(json.dumps, r)).encode()))
def test_dataset_files_parse_or_name_the_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fz") / "d.jsonl"
    path.write_bytes(data)
    try:
        rows = load_rows(str(path))
    except DataError as err:
        assert str(err).startswith(str(path)), str(err)
        return
    assert rows and all(isinstance(r, dict) for r in rows)
