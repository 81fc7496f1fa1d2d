"""Pure batching / windowing / pooling / cache helpers (no model)."""
import threading

import numpy as np
import pytest
import torch

from clinicalbert_spark.encode import cache
from clinicalbert_spark.encode.batching import (
    assign_windows,
    build_segments,
    collate,
    padded_length,
    plan_batches,
    window_starts,
)
from clinicalbert_spark.encode.pooling import average_windows, l2_normalize, mean_pool, pool


def test_padded_length():
    assert [padded_length(n, 8) for n in (1, 7, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]
    assert padded_length(13, 1) == 13


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_batches_covers_everything_within_budget(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 130, size=500)
    budget = 1024
    batches = plan_batches(lengths, budget, 8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))  # each index exactly once
    for b in batches:
        plen = padded_length(lengths[b].max(), 8)
        assert plen % 8 == 0
        assert len(b) * plen <= budget
    # longest first, and sorting keeps padding waste small
    firsts = [lengths[b].max() for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    padded = sum(len(b) * padded_length(lengths[b].max(), 8) for b in batches)
    assert lengths.sum() / padded > 0.85


def test_plan_batches_oversized_and_edge_cases():
    assert plan_batches([], 100) == []
    batches = plan_batches([500, 3, 3], max_tokens=64, pad_multiple=8)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]  # over-budget row alone
    with pytest.raises(ValueError):
        plan_batches([1], 0)


def test_plan_batches_deterministic_ties():
    b1 = plan_batches([5, 5, 5, 5], 16, 8)
    assert [b.tolist() for b in b1] == [[0, 1], [2, 3]]


def test_window_starts():
    assert window_starts(10, 10, 3).tolist() == [0]
    s = window_starts(30, 10, 3)
    assert s[0] == 0 and s[-1] == 20  # last window right-aligned
    assert np.all(np.diff(s) <= 7)  # overlap >= stride
    assert np.all(np.diff(s) > 0)
    covered = np.zeros(30, bool)
    for st in s:
        covered[st : st + 10] = True
    assert covered.all()
    with pytest.raises(ValueError):
        window_starts(30, 10, 10)


def test_assign_windows_prefers_context():
    starts = np.array([0, 7])
    choice = assign_windows(17, starts, 10)
    assert choice[0] == 0 and choice[16] == 1
    assert choice[8] == 0 and choice[9] == 1  # margins: (8: 1 vs 1 -> first), (9: 0 vs 2)
    assert assign_windows(5, np.array([0]), 3).tolist() == [0, 0, 0, -1, -1]


def test_build_segments_window_and_truncate():
    ids = [list(range(10, 40)), None, [7, 8]]
    seg = build_segments(ids, max_length=12, stride=3, long_policy="window", cls_id=1, sep_id=2)
    assert seg.n_windows.tolist() == [4, 0, 1]  # starts 0, 7, 14, 20
    assert seg.row.tolist() == [0, 0, 0, 0, 2]
    assert all(s[0] == 1 and s[-1] == 2 and len(s) <= 12 for s in seg.ids)
    assert seg.n_tokens.tolist() == [48, 0, 4]
    assert not seg.truncated.any()
    np.testing.assert_array_equal(seg.ids[1][1:-1], np.arange(10, 40)[seg.start[1] : seg.start[1] + 10])

    tr = build_segments(ids, max_length=12, stride=3, long_policy="truncate", cls_id=1, sep_id=2)
    assert tr.n_windows.tolist() == [1, 0, 1]
    assert tr.truncated.tolist() == [True, False, False]
    assert tr.n_tokens.tolist() == [12, 0, 4]
    np.testing.assert_array_equal(tr.ids[0], [1] + list(range(10, 20)) + [2])


def test_collate_right_pads_to_multiple():
    segs = [np.array([1, 5, 2]), np.array([1, 5, 6, 7, 8, 9, 10, 11, 2])]
    ids, mask = collate(segs, np.array([1, 0]), pad_id=0, pad_multiple=8)
    assert ids.shape == (2, 16)
    assert mask.sum(1).tolist() == [9, 3]
    assert ids[1, :3].tolist() == [1, 5, 2] and ids[1, 3:].sum() == 0


def test_pooling_helpers():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(mean_pool(h, m)[0].numpy(), h[0, :3].mean(0).numpy())
    np.testing.assert_allclose(pool(h, m, "cls").numpy(), h[:, 0].numpy())
    with pytest.raises(ValueError):
        pool(h, m, "max")
    v = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(v), [[0.6, 0.8], [0.0, 0.0]])
    avg = average_windows(np.array([[1.0, 1.0], [3.0, 5.0], [2.0, 2.0]]), np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(avg, [[2.0, 3.0], [0.0, 0.0], [2.0, 2.0]])


def test_cache_loads_once_even_with_threads():
    cache.clear_cache()
    calls = []

    def factory():
        calls.append(1)
        return object()

    key = ("test", "k")
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_cached(key, factory))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.load_count(key) == 1
    assert all(r is results[0] for r in results)
    assert cache.cache_info()["hits"][key] == 7

    def failing():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_cached(("test", "bad"), failing)
    assert cache.load_count(("test", "bad")) == 0  # failures are not cached
    cache.clear_cache()
    assert cache.load_count(key) == 0


def test_plan_batches_closes_early_at_length_change_once_filled():
    lengths = [16, 16, 8, 8]
    assert [b.tolist() for b in plan_batches(lengths, 64, 8)] == [[0, 1], [2, 3]]
    # min_fill=1: pure greedy, the short rows are padded up into the first batch
    assert [b.tolist() for b in plan_batches(lengths, 64, 8, min_fill=1.0)] == [[0, 1, 2, 3]]
    # a batch below min_fill keeps taking shorter rows rather than running nearly empty
    assert [b.tolist() for b in plan_batches([16, 8, 8, 8], 256, 8)] == [[0, 1, 2, 3]]


def _segments_by_hand(token_ids, max_length, stride, long_policy, cls_id=1, sep_id=2):
    """The per-row definition build_segments vectorises."""
    window = max_length - 2
    out = []  # (row, start, ids)
    for r, content in enumerate(token_ids):
        if content is None:
            continue
        n = len(content)
        starts = window_starts(n, window, stride) if (n > window and long_policy == "window") else [0]
        for s in starts:
            out.append((r, int(s), [cls_id] + list(content[s:s + window]) + [sep_id]))
    return out


@pytest.mark.parametrize("policy", ["window", "truncate"])
@pytest.mark.parametrize("seed", [0, 1])
def test_packed_segments_and_collate_match_the_per_row_definition(policy, seed):
    rng = np.random.default_rng(seed)
    token_ids = []
    for _ in range(300):
        kind = rng.random()
        if kind < 0.1:
            token_ids.append(None)
        elif kind < 0.15:
            token_ids.append([])
        else:
            n = int(rng.choice([rng.integers(1, 14), rng.integers(14, 60)]))
            token_ids.append(rng.integers(5, 999, size=n).tolist())
    seg = build_segments(token_ids, max_length=16, stride=4, long_policy=policy, cls_id=1, sep_id=2)
    ref = _segments_by_hand(token_ids, 16, 4, policy)
    assert len(seg) == len(ref)
    assert seg.row.tolist() == [r for r, _, _ in ref]
    assert seg.start.tolist() == [s for _, s, _ in ref]
    assert [x.tolist() for x in seg.ids] == [ids for _, _, ids in ref]
    assert seg.lengths.tolist() == [len(ids) for _, _, ids in ref]
    counts = np.bincount(seg.row, minlength=len(token_ids))
    np.testing.assert_array_equal(seg.n_windows, counts)
    np.testing.assert_array_equal(
        seg.n_tokens, np.bincount(seg.row, weights=seg.lengths, minlength=len(token_ids)))
    long = np.array([c is not None and len(c) > 14 for c in token_ids])
    np.testing.assert_array_equal(seg.truncated, long & (policy == "truncate"))
    index = rng.permutation(len(seg))[:37]
    for a, b in zip(collate(seg, index, 0, 8), collate(seg.ids, index, 0, 8)):
        np.testing.assert_array_equal(a, b)
    empty = build_segments([None, None], max_length=16, stride=4, long_policy=policy, cls_id=1, sep_id=2)
    assert len(empty) == 0 and empty.n_windows.tolist() == [0, 0]


def test_average_windows_mixes_single_and_windowed_rows():
    # Rows with one segment are copied, rows with several averaged, rows with none zero:
    # checked against a plain per-row mean.
    rng = np.random.default_rng(3)
    seg_row = np.sort(rng.integers(0, 60, size=120))
    vectors = rng.normal(size=(120, 5)).astype(np.float32)
    got = average_windows(vectors, seg_row, 70)
    for r in range(70):
        mine = vectors[seg_row == r]
        want = mine.astype(np.float64).mean(0) if len(mine) else np.zeros(5)
        np.testing.assert_allclose(got[r], want, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32
    in_order = average_windows(vectors[:10], np.arange(10), 10)
    np.testing.assert_array_equal(in_order, vectors[:10])
