"""The CPU kernels' split path: with fewer rows (contiguous) or images (channels_last) than twice
the thread count, each is cut into segments whose partial statistics and gradient sums are merged.
Every op and every gradient runs on shapes that force that split, checked against the float64
oracle, and adain::_cpu_segment_log confirms that every reduction and map really split (several
threads) or really did not (one thread)."""
from __future__ import annotations

import contextlib

import pytest
import torch
from cases import Case, assert_matches_oracle, make_inputs, make_statistics

import adain_ext

pytestmark = pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")

# Units of 2^16 elements or so: at most four segments of the 16384-element minimum task, and
# lengths that do not divide evenly into them. No mean offset: the error must show against
# values of size 1, not hide under rtol * |1e4|.
SPLIT_CASES = [
    Case("split_rows", (1, 2, 256, 255), style=(1, 2, 240, 250), alpha=0.6),
    Case("split_rows_biased", (1, 2, 200, 300), unbiased=False),
    Case("split_images", (1, 12, 64, 72), style=(1, 12, 50, 60), alpha=0.6,
         layout="channels_last"),
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
THREADS = [1, 4]

# Row lengths that the segment count does not divide: bounds arithmetic that drops or counts twice
# the last L % S positions shows here (float64 sees a statistic off by one element in 5e4; an
# unwritten position is garbage in every dtype). One unit (a single row or image) splits at the
# suite's 2 threads too (into min(2 * threads, elements // 16384) segments): 3 for the content
# (L % 3 == 2), 2 for the style (L odd).
REMAINDER_CASES = [
    Case("remainder_rows", (1, 1, 223, 227), style=(1, 1, 151, 249), alpha=0.6),
    Case("remainder_images", (1, 8, 79, 83), style=(1, 8, 71, 67), unbiased=False,
         layout="channels_last"),
]
REMAINDER_DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def _split_params():
    """(case, dtype, threads): the even cases at 1 and 4 threads, the remainder cases at 2 (the
    suite's thread count, which must split them too)."""
    return ([pytest.param(c, d, t, id=f"{c}-{d}-{t}") for t in THREADS for d in DTYPES
             for c in SPLIT_CASES]
            + [pytest.param(c, d, 2, id=f"{c}-{d}-2") for d in REMAINDER_DTYPES
               for c in REMAINDER_CASES])


SPLIT_PARAMS = _split_params()


@contextlib.contextmanager
def _threads_and_segment_log(threads: int):
    """Runs the body with `threads` intra-op threads; yields the list of segment counts every CPU
    reduction and map used, filled in when the body ends."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.ops.adain._cpu_segment_log(True)
    log: list[int] = []
    try:
        yield log
    finally:
        log.extend(torch.ops.adain._cpu_segment_log(False))
        torch.set_num_threads(previous)


def _assert_split_as_planned(log, threads):
    assert log, "no CPU kernel ran"
    if threads == 1:
        assert set(log) == {1}, log
    else:
        assert min(log) > 1, f"some kernel did not split its rows: {log}"


def _grad(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("case,dtype,threads", SPLIT_PARAMS)
def test_split_adain(case: Case, dtype, threads):
    content, style = make_inputs(case, dtype, requires_grad=True)
    grad_out = _grad(case.content, dtype, 11)
    with _threads_and_segment_log(threads) as log:
        out = adain_ext.adain(content, style, case.alpha, unbiased=case.unbiased, backend="cpp")
        got = torch.autograd.grad(out, (content, style), grad_out)
    _assert_split_as_planned(log, threads)
    assert_matches_oracle("adain", (content, style), out, got, (grad_out,), dtype, case,
                          alpha=case.alpha, unbiased=case.unbiased)


@pytest.mark.parametrize("case,dtype,threads", SPLIT_PARAMS)
def test_split_affine(case: Case, dtype, threads):
    x, _ = make_inputs(case, dtype, requires_grad=True)
    mean, std = make_statistics(case, dtype, requires_grad=True)
    grad_out = _grad(case.content, dtype, 12)
    with _threads_and_segment_log(threads) as log:
        out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, backend="cpp")
        got = torch.autograd.grad(out, (x, mean, std), grad_out)
    _assert_split_as_planned(log, threads)
    assert_matches_oracle("adain_affine", (x, mean, std), out, got, (grad_out,), dtype, case,
                          unbiased=case.unbiased)


@pytest.mark.parametrize("case,dtype,threads", SPLIT_PARAMS)
def test_split_mean_std(case: Case, dtype, threads):
    x, _ = make_inputs(case, dtype, requires_grad=True)
    N, C = case.content[:2]
    grad_mean, grad_std = _grad((N, C, 1, 1), dtype, 13), _grad((N, C, 1, 1), dtype, 14)
    with _threads_and_segment_log(threads) as log:
        mean, std = adain_ext.mean_std(x, unbiased=case.unbiased, backend="cpp")
        got = torch.autograd.grad((mean, std), (x,), (grad_mean, grad_std))
    _assert_split_as_planned(log, threads)
    assert_matches_oracle("mean_std", (x,), (mean, std), got, (grad_mean, grad_std), dtype, case,
                          unbiased=case.unbiased)


def test_segment_log_is_off_unless_asked():
    torch.ops.adain._cpu_segment_log(False)
    x = torch.randn(1, 2, 8, 8)
    adain_ext.mean_std(x, backend="cpp")
    assert torch.ops.adain._cpu_segment_log(False) == []
