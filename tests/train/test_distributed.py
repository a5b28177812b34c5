"""Data-parallel training with 2 gloo processes on the CPU: one distributed step on b0, b1 equals one
single-process step on cat([b0, b1]) for every penalty (spectral norm, EMA), every rank stays
identical, a killed 2-process run resumes on 1 or 2 processes, and a failing or stalled rank ends the
run on every rank with a clear error before the timeout."""
import json

import pytest
import torch
import torch.distributed as dist

import dist_workers as W
from ganfast.train import distributed
from ganfast.train.distributed import DistributedError, launch

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
STEPS = 2


def assert_close_states(a, b, atol, what):
    for part in a:
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            x, y = a[part][k], b[part][k]
            err = (x.double() - y.double()).abs().max().item()
            assert err <= atol, f"{what}: {part}.{k} differs by {err}"


def assert_equal_states(a, b, what):
    for part in a:
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{what}: {part}.{k} differs between the ranks"


def test_distributed_step_equals_single_process_step_on_the_concatenation(tmp_path):
    launch(2, W.equivalence, str(tmp_path), STEPS)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for i, case in enumerate(W.CASES):
        single = W.build(case, distributed=False)
        stats = [single.step(W.global_batch(s)) for s in range(STEPS)]
        what = f"case {case}"
        # u, v (in D's state), EMA and weights: bit-identical on the two ranks
        assert_equal_states(ranks[0][i]["state"], ranks[1][i]["state"], what)
        assert_close_states(ranks[0][i]["state"], W.states(single), 1e-6, what)
        assert any("_u" in k for k in ranks[0][i]["state"]["D"]), "spectral norm's u is not in D's state"
        for s in range(STEPS):
            assert ranks[0][i]["stats"][s] == ranks[1][i]["stats"][s]
            for k, v in stats[s].items():
                assert ranks[0][i]["stats"][s][k] == pytest.approx(v, rel=1e-5, abs=1e-6), f"{what}: stat {k}"


def test_conditional_distributed_step_equals_single_process_step_on_the_concatenation(tmp_path):
    """Labels travel with each rank's batch, and the fake labels are each rank's slice of one draw."""
    launch(2, W.cond_equivalence, str(tmp_path), STEPS)
    ranks = [torch.load(tmp_path / f"cond{r}.pt") for r in range(2)]
    for i, case in enumerate(W.COND_CASES):
        single = W.build_conditional(case, distributed=False)
        stats = [single.step(W.global_labelled_batch(s)) for s in range(STEPS)]
        what = f"conditional case {case}"
        assert_equal_states(ranks[0][i]["state"], ranks[1][i]["state"], what)
        assert_close_states(ranks[0][i]["state"], W.states(single), 1e-6, what)
        assert any(k.startswith("embed.parametrizations") for k in ranks[0][i]["state"]["D"])  # SN on the embedding
        for s in range(STEPS):
            for k, v in stats[s].items():
                assert ranks[0][i]["stats"][s][k] == pytest.approx(v, rel=1e-5, abs=1e-6), f"{what}: stat {k}"


def test_killed_two_process_run_resumes_on_one_then_two_processes(tmp_path):
    torch.manual_seed(0)
    data = W.points(96, seed=3)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(DistributedError, match="rank"):
        launch(2, W.fit_killed, str(ckpt), data, 8, 5)
    assert [p.name for p in sorted(ckpt.glob("ckpt-*.pt"))] == ["ckpt-000000002.pt", "ckpt-000000004.pt"]
    # on 1 process with the same global batch (2 x 8): from step 4 to 6
    one = W.build(dict(loss="ns", penalty="r1"), seed=7, distributed=False)
    one.fit(data, 6, batch_size=2 * W.B, checkpoint_dir=ckpt, checkpoint_every=2, progress=False)
    assert one.step_count == 6
    # back on 2 processes: from step 6 to 8
    launch(2, W.fit_resume, str(ckpt), data, 8, str(tmp_path))
    resumed = [torch.load(tmp_path / f"resumed{r}.pt") for r in range(2)]
    assert_equal_states(resumed[0], resumed[1], "resumed")
    # an uninterrupted single-process run on the global batches gives the same weights
    ref = W.build(dict(loss="ns", penalty="r1"), seed=7, distributed=False)
    ref.fit(data, 8, batch_size=2 * W.B, progress=False)
    assert_close_states(resumed[0], W.states(ref), 1e-5, "resumed vs uninterrupted")


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_ends_every_rank_with_a_clear_error(tmp_path, mode):
    timeout = 20.0 if mode == "raise" else 2.0
    if mode == "raise":  # launch names the rank that raised, with its error
        with pytest.raises(DistributedError, match=r"rank 1 raised[\s\S]*ValueError"):
            launch(2, W.failing, str(tmp_path), mode, timeout)
    else:
        launch(2, W.failing, str(tmp_path), mode, timeout)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["err"] is not None and r1["err"] is not None
    assert r0["err"][0] == "DistributedError"
    if mode == "raise":
        assert r1["err"][0] == "ValueError" and "per-sample shape" in r1["err"][1]
        # rank 0 learns why, at once (not at the timeout)
        assert "rank 1 failed at step 3 with ValueError" in r0["err"][1]
        assert r0["elapsed"] < timeout and "Timed out" not in r0["err"][1]
    else:
        assert "within 2 s" in r0["err"][1]
        assert r0["elapsed"] < timeout + 2.5  # rank 1 stalls for timeout + 3 s
        assert r1["err"][0] == "DistributedError"


def test_bad_arguments():
    with pytest.raises(ValueError, match="nproc"):
        launch(0, print)
    with pytest.raises(ValueError, match="distributed=True but this process is alone"):
        W.build(dict(loss="ns"), distributed=True)
    assert launch(1, sum, [1, 2]) == 3
    assert distributed.free_port() > 0


def test_the_buffers_averaged_after_a_step_are_the_batch_statistics_only():
    """BatchNorm's running statistics see per-rank batches and are averaged; spectral norm's u, v
    (in G or D, PyTorch's or ganfast's) follow from the identical weights and are not."""
    from torch import nn
    from torch.nn.utils.parametrizations import spectral_norm as torch_sn

    import ganfast
    G = nn.Sequential(torch_sn(nn.Linear(3, 4)), nn.BatchNorm1d(4), ganfast.nn.spectral_norm(nn.Linear(4, 2)))
    D = ganfast.nn.apply_spectral_norm(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        synced = distributed.Communicator(torch.device("cpu")).share_models(G, D)
    finally:
        dist.destroy_process_group()
    want = [G[1].running_mean, G[1].running_var, D[1].running_mean, D[1].running_var]
    assert [id(b) for b in synced] == [id(b) for b in want]


def test_launch_returns_rank_0s_tensors_and_a_normalized_generator_trains_as_in_one_process():
    """launch's return value crosses from rank 0's process: a state_dict of tensors (torch's queues
    share tensors by file descriptors, which die with the process). G with PyTorch's spectral norm,
    replaced by the trainer's, trains on two ranks as in one process on the concatenated batches."""
    two = launch(2, W.trained_generator_state, STEPS)
    one = W.trained_generator_state(STEPS)
    assert two.keys() == one.keys() and any(k.endswith("_u") for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
