"""The collectives of ``lejepa_tune.distributed``: what each returns in one process, and the same
calls in two real gloo processes (uneven shards padded and trimmed, means on copies). The
autograd collectives are tested through what uses them: SIGReg, the spectral regulariser
(test_losses) and the global-batch BatchNorm (test_models), each against one process."""

from __future__ import annotations

import pytest
import torch

from lejepa_tune import distributed as D

TOTAL = 5  # items over 2 ranks: shards of 3 and 2


def test_one_process_is_a_world_of_one():
    assert (D.world_size(), D.rank()) == (1, 0)
    assert D.shard(TOTAL) == range(TOTAL)
    rows = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(D.all_gather_rows(rows, 3), rows)
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    x = torch.tensor([1.0, 2.0])
    mean = D.mean_over_ranks(x)
    assert mean.dtype == torch.float64 and torch.equal(mean, x.double())
    mean += 1  # a copy: the caller's tensor is not changed through it
    assert torch.equal(x, torch.tensor([1.0, 2.0]))


def _collectives() -> dict:
    rank = D.rank()
    mine = D.shard(TOTAL)
    # Each rank holds the rows of its items (row i is [i, 10 i]); gathered, they are in item order.
    gathered = D.all_gather_rows(torch.tensor([[float(i), 10.0 * i] for i in mine]), TOTAL)
    values = torch.tensor([float(rank + 1)], dtype=torch.float64)  # float64: `.to()` alone would not copy it
    mean = D.mean_over_ranks(values)
    return {"shard": list(mine), "gathered": gathered, "mean": mean, "values": values, "broadcast": D.broadcast_object({"from": rank})}


@pytest.fixture(scope="module")
def two_ranks(gloo_ranks):
    return gloo_ranks.run(_collectives)


def test_two_ranks_shard_the_items_and_gather_them_back_in_order(two_ranks):
    assert [r["shard"] for r in two_ranks] == [[0, 2, 4], [1, 3]]
    expected = torch.tensor([[float(i), 10.0 * i] for i in range(TOTAL)])
    for r in two_ranks:
        assert torch.equal(r["gathered"], expected)


def test_two_ranks_agree_on_means_and_broadcasts_and_keep_their_inputs(two_ranks):
    for rank, r in enumerate(two_ranks):
        assert r["mean"].dtype == torch.float64 and r["mean"].item() == 1.5
        assert r["values"].item() == rank + 1  # the collective worked on a copy
        assert r["broadcast"] == {"from": 0}
