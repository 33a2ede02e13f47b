"""The shared training machinery: optimisers, schedule, batch streams, sync BN."""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from torch import nn

from fakes import CountingStage

from proda.train.batches import BatchStream
from proda.train.optim import SequentialSGD, make_sgd, poly_schedule
from proda.models.syncbn import GlooSyncBatchNorm, convert_sync_batchnorm


def _quadratic_grad(p: torch.Tensor) -> None:
    p.grad = 2 * p.detach().clone()


def test_sequential_sgd_equals_torch_sgd_without_duplicates():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(a.detach().clone())
    ours = SequentialSGD([a], lr=0.1, momentum=0.9, weight_decay=0.01)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(4):
        _quadratic_grad(a)
        _quadratic_grad(b)
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b)


def test_sequential_sgd_applies_duplicates_k_times_in_order():
    """Q1: a parameter listed 3 times gets 3 momentum updates per step, sharing one buffer."""
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    lr, mom, wd = 0.1, 0.9, 0.01
    opt = SequentialSGD([p, p, p], lr=lr, momentum=mom, weight_decay=wd)
    x = torch.tensor([1.0, -2.0])
    buf = None
    for _ in range(2):
        grad = 2 * x.clone()
        p.grad = grad.clone()
        opt.step()
        for _k in range(3):  # independent re-implementation of the sequential semantics
            d = grad + wd * x
            buf = d.clone() if buf is None else mom * buf + d
            x = x - lr * buf
    torch.testing.assert_close(p.detach(), x)


def test_make_sgd_parity_switches_implementation():
    p = nn.Parameter(torch.zeros(1))
    assert isinstance(make_sgd([{"params": [p, p], "lr": 0.1}], momentum=0.9, weight_decay=0, parity=True),
                      SequentialSGD)
    assert type(make_sgd([{"params": [p], "lr": 0.1}], momentum=0.9, weight_decay=0,
                         parity=False)) is torch.optim.SGD


def test_poly_schedule_matches_reference_formula():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 1.0}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 10.0}])
    sched = poly_schedule(opt, max_iter=10, power=0.9)
    for k in range(12):
        expected = max(0.0, 1 - k / 10) ** 0.9
        assert math.isclose(opt.param_groups[0]["lr"], expected, abs_tol=1e-12)
        assert math.isclose(opt.param_groups[1]["lr"], 10 * expected, abs_tol=1e-12)
        opt.step()
        sched.step()


class _Numbers(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _take(stream: BatchStream, k: int) -> list[list[int]]:
    return [next(stream).tolist() for _ in range(k)]


def test_batch_stream_epochs_are_permutations_and_drop_last():
    stream = BatchStream(_Numbers(10), 4, seed=3)
    first = _take(stream, 2)
    assert stream.batches_per_epoch() == 2
    assert len({i for b in first for i in b}) == 8
    second = _take(stream, 2)
    assert stream.epoch == 1 and first != second


def test_batch_stream_resume_continues_the_same_sequence():
    full = _take(BatchStream(_Numbers(10), 2, seed=1), 9)
    a = BatchStream(_Numbers(10), 2, seed=1)
    head = _take(a, 4)
    b = BatchStream(_Numbers(10), 2, seed=1)
    b.load_state_dict(a.state_dict())
    assert head + _take(b, 5) == full


def test_batch_stream_ranks_split_each_global_batch():
    whole = _take(BatchStream(_Numbers(12), 4, seed=0), 3)
    r0 = _take(BatchStream(_Numbers(12), 4, seed=0, rank=0, world_size=2), 3)
    r1 = _take(BatchStream(_Numbers(12), 4, seed=0, rank=1, world_size=2), 3)
    assert [x + y for x, y in zip(r0, r1)] == whole


def test_batch_stream_rejects_too_small_dataset():
    with pytest.raises(ValueError, match="cannot fill one batch"):
        BatchStream(_Numbers(3), 4)


def test_gloo_sync_batchnorm_equals_batchnorm_on_one_process(tmp_path):
    """With a one-process group the synchronised statistics are the local ones."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        bn = nn.BatchNorm2d(3)
        sync = convert_sync_batchnorm(nn.Sequential(copy.deepcopy(bn)), torch.device("cpu"))[0]
        assert isinstance(sync, GlooSyncBatchNorm)
        x = torch.randn(2, 3, 4, 5) * 3 + 1
        # world size 1 takes the plain path; force the synchronised path by calling it directly
        xs = x.clone().requires_grad_(True)
        out_sync = _sync_forward(sync, xs)
        xb = x.clone().requires_grad_(True)
        out_ref = bn(xb)
        torch.testing.assert_close(out_sync, out_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sync.running_mean, bn.running_mean)
        torch.testing.assert_close(sync.running_var, bn.running_var)
        out_sync.pow(2).sum().backward()
        out_ref.pow(2).sum().backward()
        torch.testing.assert_close(xs.grad, xb.grad, rtol=1e-4, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_cpu_sync_batchnorm_conversion_keeps_the_parameters():
    """An optimiser built before the conversion (the warm-up's and stage 2/3's groups) still trains
    the converted model: the synchronised BN holds the very same tensors."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    model[1].weight.requires_grad_(False)
    params, buffers = list(model.parameters()), list(model.buffers())
    convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(model[1], GlooSyncBatchNorm)
    assert all(a is b for a, b in zip(model.parameters(), params)) and len(list(model.parameters())) == 4
    assert all(a is b for a, b in zip(model.buffers(), buffers))
    assert not model[1].weight.requires_grad


def _sync_forward(bn: GlooSyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Run the all-reduce branch even though the group has one process."""
    import torch.distributed as dist

    real = dist.get_world_size
    dist.get_world_size = lambda *a, **k: 2  # type: ignore[assignment]
    try:
        return bn(x)
    finally:
        dist.get_world_size = real  # type: ignore[assignment]


def test_runtime_is_cpu_without_cuda():
    from proda.runtime import make_runtime

    rt = make_runtime({"device": "cpu", "amp": True})
    assert rt.device.type == "cpu" and rt.world_size == int(os.environ.get("WORLD_SIZE", "1"))


@pytest.mark.parametrize("select, expected", [("last", 6.0), ("best_on_val", 4.0)])
def test_trainer_exports_last_or_best_on_val(tmp_path, select, expected):
    from proda.train.loop import Trainer

    scores = iter([10.0, 30.0, 20.0])  # validations at iterations 2, 4, 6
    stage = CountingStage()
    trainer = Trainer(stage, BatchStream(_Numbers(4), 2), BatchStream(_Numbers(4), 2), iterations=6,
                      state_dir=tmp_path, schedule_iters=6, checkpoint_every=3, log_every=1,
                      validate=lambda model: next(scores), val_every=2, select=select, progress=False)
    trainer.run()
    assert trainer.iteration == 6
    assert trainer.final_student_state()["weight"].item() == expected
    rows = (tmp_path / "train.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,loss,lr") and len(rows) == 7


def test_trainer_refuses_best_on_val_without_validation(tmp_path):
    from proda.train.loop import Trainer

    with pytest.raises(ValueError, match="train.val_every"):
        Trainer(CountingStage(), BatchStream(_Numbers(4), 2), BatchStream(_Numbers(4), 2), iterations=2,
                state_dir=tmp_path, schedule_iters=2, select="best_on_val")


# ---------------------------------------------------------------------------- non-finite losses
class _NanStage:
    """One weight trained towards 1 by momentum SGD on ``(w - 1)²``; at the iterations in ``nan``
    the input is NaN, so the loss term ``loss_tgt`` and every gradient are NaN."""

    name = "nanstage"

    def __init__(self, nan: tuple[int, ...] = ()):
        from proda.runtime import Runtime

        self.runtime = Runtime(device=torch.device("cpu"))
        self.student = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.student.weight)
        self.optimizers = {"G": torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9)}
        self.nan = nan

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def step(self, source, target, iteration: int) -> dict[str, float]:
        self.optimizers["G"].zero_grad()
        x = torch.full((1, 1), math.nan if iteration in self.nan else 1.0)
        loss = (self.student(x) - 1).square().sum()
        loss.backward()
        self.optimizers["G"].step()
        return {"loss_src": 0.5, "loss_tgt": loss.item()}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state) -> None:
        return None


def _nan_trainer(stage, tmp_path, iterations: int, skips: int = 0):
    from proda.train.loop import Trainer

    return Trainer(stage, BatchStream(_Numbers(4), 2), BatchStream(_Numbers(4), 2), iterations=iterations,
                   state_dir=tmp_path, schedule_iters=iterations, poly_power=0.0, log_every=1, progress=False,
                   max_nonfinite_skips=skips)


def test_non_finite_loss_stops_training_in_one_line_naming_stage_iteration_and_term(tmp_path):
    from proda.train.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError) as err:
        _nan_trainer(_NanStage(nan=(3,)), tmp_path, iterations=6).run()
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert msg.startswith("nanstage: non-finite loss at iteration 3/6 (loss_tgt=nan); training stopped")
    assert "loss_src" not in msg and "train.max_nonfinite_skips: 0" in msg


def test_non_finite_steps_are_skipped_without_an_optimizer_step_up_to_the_limit(tmp_path, capsys):
    """Two NaN iterations with max_nonfinite_skips 2: both skipped (weights and momentum untouched),
    so the weight equals that of the 4 finite steps alone; each skip is reported in one line."""
    stage = _NanStage(nan=(2, 4))
    _nan_trainer(stage, tmp_path / "skip", iterations=6, skips=2).run()
    reference = _NanStage()
    _nan_trainer(reference, tmp_path / "ref", iterations=4).run()
    assert torch.equal(stage.student.weight, reference.student.weight)
    assert math.isfinite(stage.student.weight.item())
    skipped = [line for line in capsys.readouterr().err.splitlines() if "non-finite" in line]
    assert skipped == [
        "[nanstage] nanstage: non-finite loss at iteration 2/6 (loss_tgt=nan): optimizer step of G skipped "
        "(1/2 skips used)",
        "[nanstage] nanstage: non-finite loss at iteration 4/6 (loss_tgt=nan): optimizer step of G skipped "
        "(2/2 skips used)"]
    assert stage.optimizers["G"]._optimizer_step_pre_hooks == {}  # the guard is removed afterwards
    assert torch.load(tmp_path / "skip" / "last.pt", weights_only=True)["nonfinite_skips"] == 2  # resumed too


def test_non_finite_steps_beyond_the_limit_stop_training(tmp_path):
    from proda.train.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"iteration 4/6 .*steps skipped before: 1"):
        _nan_trainer(_NanStage(nan=(2, 4)), tmp_path, iterations=6, skips=1).run()


@pytest.mark.parametrize("skips", [-1, 1.5])
def test_max_nonfinite_skips_must_be_a_count(tmp_path, skips):
    with pytest.raises(ValueError, match="train.max_nonfinite_skips"):
        _nan_trainer(_NanStage(), tmp_path, iterations=2, skips=skips)
