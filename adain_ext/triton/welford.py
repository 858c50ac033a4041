"""The one Welford/Chan merge of the Triton kernels, the statistics helpers built on it, and the
row addressing every kernel shares (which rows and piece a program takes, where a row starts).

Every statistic is computed from centred pieces: a tile's mean from its sum, its m2 from the
squared deviations to that mean (x is still in registers, so this costs no extra read), and the
pieces merged with Chan's pairwise formula. The raw sum-of-squares formula is never used: it
cancels catastrophically on large-mean data (x = 1e4 + N(0, 1) in fp32). Counts are kept in the
accumulation dtype: they only enter as ratios, where a rounding of 1 in 2**24 is harmless.
"""
import triton
import triton.language as tl


@triton.jit
def welford_merge(mean_a, m2_a, count_a, mean_b, m2_b, count_b):
    """Chan et al.'s merge of the statistics of two disjoint pieces; either count may be 0."""
    count = count_a + count_b
    delta = mean_b - mean_a
    share_b = count_b / tl.maximum(count, 1.0)  # 0 when both are empty: keeps padding rows finite
    mean = mean_a + delta * share_b
    m2 = m2_a + m2_b + delta * delta * count_a * share_b
    return mean, m2, count


@triton.jit
def tile_stats(x, mask):
    """Per-row (axis 1) count, mean and m2 of a [BLOCK_R, BLOCK_L] tile; masked entries ignored."""
    count = tl.sum(mask.to(x.dtype), axis=1)
    mean = tl.sum(tl.where(mask, x, 0.0), axis=1) / tl.maximum(count, 1.0)
    centred = tl.where(mask, x - mean[:, None], 0.0)
    m2 = tl.sum(centred * centred, axis=1)
    return mean, m2, count


@triton.jit
def row_block_and_piece(pieces):
    """This program's block of rows and its piece of them (a segment or an L tile). Grids are 1-D,
    program = row_block * pieces + piece (_common.Plan.grid): CUDA allows 2**31 - 1 programs on
    grid axis 0 but only 65535 on axes 1 and 2, fewer than the tiles of a 2**25-element row."""
    program = tl.program_id(0)
    return program // pieces, program % pieces


@triton.jit
def row_base(rows, C, L, CHANNELS_LAST: tl.constexpr):
    """Offset of element 0 of each row r = n*C + c. 64-bit: N*C*H*W may exceed 2**31."""
    rows64 = rows.to(tl.int64)
    if CHANNELS_LAST:
        base = (rows64 // C) * C * L + rows64 % C
    else:
        base = rows64 * L
    return base


@triton.jit
def tile_pointers(ptr, base, offs_l, C, CHANNELS_LAST: tl.constexpr):
    """Pointers of a [BLOCK_R, BLOCK_L] tile: contiguous rows are dense, channels_last rows
    interleave with stride C (so consecutive rows, not elements, are adjacent in memory)."""
    if CHANNELS_LAST:
        ptrs = ptr + base[:, None] + offs_l[None, :].to(tl.int64) * C
    else:
        ptrs = ptr + base[:, None] + offs_l[None, :]
    return ptrs


@triton.jit
def row_stats_loop(ptr, base, rows_mask, start, stop, C, acc_zero,
                   CHANNELS_LAST: tl.constexpr, BLOCK_L: tl.constexpr):
    """mean, m2 and count of elements [start, stop) of each row, one BLOCK_L tile at a time."""
    mean = acc_zero
    m2 = acc_zero
    count = acc_zero
    for l0 in range(start, stop, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask = rows_mask[:, None] & (offs_l < stop)[None, :]
        ptrs = tile_pointers(ptr, base, offs_l, C, CHANNELS_LAST)
        x = tl.load(ptrs, mask=mask, other=0.0).to(acc_zero.dtype)
        t_mean, t_m2, t_count = tile_stats(x, mask)
        mean, m2, count = welford_merge(mean, m2, count, t_mean, t_m2, t_count)
    return mean, m2, count


@triton.jit
def merge_partials(PARTIAL_MEAN, PARTIAL_M2, rows, rows_mask, R, L, segment_len, segments,
                   acc_zero):
    """Merges the per-segment partial statistics of each row, always in segment order, so every
    program that merges a row gets bit-identical statistics. Partials are laid out [segment, row].
    """
    mean = acc_zero
    m2 = acc_zero
    count = acc_zero
    for s in range(segments):
        p_mean = tl.load(PARTIAL_MEAN + s * R + rows, mask=rows_mask, other=0.0)
        p_m2 = tl.load(PARTIAL_M2 + s * R + rows, mask=rows_mask, other=0.0)
        p_count = (tl.minimum(tl.maximum(L - s * segment_len, 0), segment_len).to(acc_zero.dtype)
                   + acc_zero)
        mean, m2, count = welford_merge(mean, m2, count, p_mean, p_m2, p_count)
    return mean, m2, count


@triton.jit
def scalar(hi, lo, acc_zero):
    """alpha or eps, passed as two fp32 halves (see _common.split_scalar), in the acc dtype."""
    return (acc_zero + hi) + lo  # a [BLOCK_R] vector: scalars lack .to in the interpreter
