"""EMA teacher: parameter averaging, buffer copy, wrappers."""
import pytest
import torch
import torch.distributed as dist
from torch import nn

from proda.ema import ema_update, make_ema, unwrap

torch.set_num_threads(1)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def perturb(model: nn.Module) -> None:
    """Change every parameter and, through a train-mode forward, every BN buffer."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(2, 3, 3, 3))


def test_make_ema_is_exact_frozen_copy():
    student = tiny_net()
    ema = make_ema(student)
    assert ema is not student and all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (k, a), (_, b) in zip(ema.state_dict().items(), student.state_dict().items()):
        assert torch.equal(a, b), k
        assert a.data_ptr() != b.data_ptr()
    assert ema.training == student.training


@pytest.mark.parametrize("momentum", [0.999, 0.5])
def test_ema_update_params_and_buffers(momentum):
    student = tiny_net()
    ema = make_ema(student)
    old = {k: v.clone() for k, v in ema.named_parameters()}
    perturb(student)
    ema_update(ema, student, momentum)
    new = dict(student.named_parameters())
    for k, p in ema.named_parameters():
        expected = momentum * old[k] + (1 - momentum) * new[k].detach()
        assert torch.allclose(p, expected, atol=1e-7), k
        assert not torch.equal(p, new[k])
    student_bufs = dict(student.named_buffers())
    assert len(student_bufs) == 3  # running_mean, running_var, num_batches_tracked
    for k, b in ema.named_buffers():
        assert torch.equal(b, student_bufs[k]), k
    assert ema[1].num_batches_tracked.item() == 1


def test_ema_update_unwraps_data_parallel_and_checks_structure():
    student = tiny_net()
    ema = make_ema(nn.DataParallel(student))
    assert isinstance(ema, nn.Sequential)
    perturb(student)
    ema_update(ema, nn.DataParallel(student), 0.0)  # momentum 0: exact copy
    for a, b in zip(ema.state_dict().values(), student.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(ema, nn.Sequential(nn.Conv2d(3, 4, 1)), 0.9)


def test_ema_update_unwraps_ddp(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        student = tiny_net()
        wrapped = nn.parallel.DistributedDataParallel(student)
        assert unwrap(wrapped) is student
        ema = make_ema(wrapped)
        old = [p.clone() for p in ema.parameters()]
        perturb(student)
        ema_update(ema, wrapped, 0.9)
        for o, p, s in zip(old, ema.parameters(), student.parameters()):
            assert torch.allclose(p, 0.9 * o + 0.1 * s.detach(), atol=1e-7)
    finally:
        dist.destroy_process_group()
