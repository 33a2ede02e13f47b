"""Losses checked against formulas written out with python floats / numpy on tiny tensors."""
import math

import numpy as np
import pytest
import torch

from proda import losses

torch.set_num_threads(1)


def np_log_softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# logits 1×3×1×3, pixel j has logits LOGITS[j]
LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0]]


def logits_tensor() -> torch.Tensor:
    return torch.tensor(LOGITS, dtype=torch.float64).T.reshape(1, 3, 1, 3).requires_grad_(True)


def py_softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_cross_entropy_ignores_250():
    target = torch.tensor([[[0, 250, 1]]])
    expected = (-math.log(py_softmax(LOGITS[0])[0]) - math.log(py_softmax(LOGITS[2])[1])) / 2
    assert losses.cross_entropy(logits_tensor(), target).item() == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_all_ignored_is_zero_with_graph():
    logits = logits_tensor()
    loss = losses.cross_entropy(logits, torch.full((1, 1, 3), 250))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_reverse_ce_closed_form():
    target = torch.tensor([[[0, 250, 1]]])
    wrong = [p for k, p in enumerate(py_softmax(LOGITS[0])) if k != 0]
    wrong += [p for k, p in enumerate(py_softmax(LOGITS[2])) if k != 1]
    expected = -math.log(1e-4) * sum(wrong) / (2 + 1e-6)
    assert losses.reverse_ce(logits_tensor(), target).item() == pytest.approx(expected, rel=1e-6)


def test_reverse_ce_probability_clamp():
    logits = torch.tensor([0.0, -100.0, 100.0]).reshape(1, 3, 1, 1)
    # p_0, p_1 underflow far below 1e-7 and are clamped up to it
    expected = 9.210340371976184 * 2e-7 / (1 + 1e-6)
    got = losses.reverse_ce(logits, torch.tensor([[[2]]])).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_symmetric_ce_combines():
    target = torch.tensor([[[2, 0, 250]]])
    ce = (-math.log(py_softmax(LOGITS[0])[2]) - math.log(py_softmax(LOGITS[1])[0])) / 2
    wrong = [p for k, p in enumerate(py_softmax(LOGITS[0])) if k != 2]
    wrong += [p for k, p in enumerate(py_softmax(LOGITS[1])) if k != 0]
    rce = -math.log(1e-4) * sum(wrong) / (2 + 1e-6)
    got = losses.symmetric_ce(logits_tensor(), target, alpha=0.1, beta=1.0).item()
    assert got == pytest.approx(0.1 * ce + rce, rel=1e-6)


def test_mrkld_and_mrent():
    x = np.array(LOGITS).T.reshape(1, 3, 1, 3)
    logp = np_log_softmax(x)
    t = torch.from_numpy(x)
    assert losses.mrkld(t).item() == pytest.approx(-logp.mean(), rel=1e-6)
    entropy_terms = [sum(p * math.log(p) for p in py_softmax(row)) for row in LOGITS]
    assert losses.mrent(t).item() == pytest.approx(sum(entropy_terms) / 3, rel=1e-6)
    assert losses.regulariser(t, "mrkld").item() == losses.mrkld(t).item()
    assert losses.regulariser(t, "MRENT").item() == losses.mrent(t).item()
    with pytest.raises(ValueError, match="regular_type"):
        losses.regulariser(t, "L2")


def test_prototype_consistency_masked_mean():
    temperature = 2.0
    teacher = np.array([[1.0, 2.0], [0.5, 3.0], [250.0, 250.0]])  # C=3 × 2 pixels (H=1)
    student = np.array([[0.2, 1.0], [1.5, 0.1], [2.0, 2.0]])
    mask = np.array([[True, False], [True, False], [True, False]])
    total, count = 0.0, 0
    for p in range(2):
        t = py_softmax(list(-temperature * teacher[:, p]))
        s = py_softmax(list(-temperature * student[:, p]))
        for k in range(3):
            if mask[k, p]:
                total += t[k] * (math.log(t[k]) - math.log(s[k]))
                count += 1
    td = torch.tensor(teacher).reshape(1, 3, 1, 2)
    sd = torch.tensor(student).reshape(1, 3, 1, 2).requires_grad_(True)
    loss = losses.prototype_consistency(td, sd, torch.tensor(mask).reshape(1, 3, 1, 2), temperature)
    assert loss.item() == pytest.approx(total / count, rel=1e-6)
    loss.backward()
    assert sd.grad[..., 1].abs().max().item() == 0.0  # masked pixel: no gradient
    assert sd.grad[..., 0].abs().max().item() > 0.0


def test_prototype_consistency_zero_teacher_prob_and_empty_mask():
    td = torch.tensor([0.0, 5000.0, 1.0]).reshape(1, 3, 1, 1)   # t_1 underflows to exactly 0
    sd = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 3, 1, 1)
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)              # broadcast over classes
    t = py_softmax([0.0, -5000.0, -1.0])
    s = py_softmax([0.0, -1.0, -2.0])
    expected = sum(t[k] * (math.log(t[k]) - math.log(s[k])) for k in (0, 2)) / 3
    assert losses.prototype_consistency(td, sd, mask, 1.0).item() == pytest.approx(expected, rel=1e-6)
    empty = losses.prototype_consistency(td, sd, torch.zeros_like(mask), 1.0)
    assert empty.item() == 0.0


@pytest.mark.parametrize("parity", [False, True])
def test_distillation_kl(parity):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 3, 2, 2))
    t = rng.normal(size=(2, 3, 2, 2))
    tp = np.exp(np_log_softmax(t))
    s_term = np.exp(np_log_softmax(s)) if parity else np_log_softmax(s)
    expected = (tp * (np.log(tp) - s_term)).sum() / s.size
    got = losses.distillation_kl(torch.from_numpy(s), torch.from_numpy(t), parity=parity)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_kl_intended_is_zero_for_identical_logits():
    z = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    assert abs(losses.distillation_kl(z, z).item()) < 1e-12
    assert losses.distillation_kl(z, z, parity=True).item() != pytest.approx(0.0)


def test_gan_losses():
    d = torch.tensor([[0.5, -1.0], [2.0, 0.0]]).reshape(1, 1, 2, 2)
    vals = [0.5, -1.0, 2.0, 0.0]
    assert losses.lsgan_loss(d, 1.0).item() == pytest.approx(sum((v - 1) ** 2 for v in vals) / 4)
    assert losses.lsgan_loss(d, 0.0).item() == pytest.approx(sum(v * v for v in vals) / 4)
    sig = [1 / (1 + math.exp(-v)) for v in vals]
    bce_one = -sum(math.log(p) for p in sig) / 4
    bce_zero = -sum(math.log(1 - p) for p in sig) / 4
    assert losses.vanilla_gan_loss(d, 1.0).item() == pytest.approx(bce_one, rel=1e-6)
    assert losses.vanilla_gan_loss(d, 0.0).item() == pytest.approx(bce_zero, rel=1e-6)


def _masked_losses(rank: int, world: int, init: str, out: str) -> None:
    """Worker: rank 0 holds 1000 pixels at CE 1.0, rank 1 100 pixels at CE 3.0 (and unequal masks)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    logits, target, teacher, student, mask = _uneven_batch(rank)
    logits.requires_grad_(True)
    student.requires_grad_(True)
    pairs = [(losses.cross_entropy(logits, target, ddp=True), logits),
             (losses.symmetric_ce(logits, target, 0.1, 1.0, ddp=True), logits),
             (losses.prototype_consistency(teacher, student, mask, 2.0, ddp=True), student)]
    result = {"values": [loss.item() for loss, _ in pairs],
              "grads": [torch.autograd.grad(loss, x)[0] / world for loss, x in pairs]}  # DDP averages
    torch.save(result, f"{out}.{rank}")
    dist.destroy_process_group()


def _uneven_batch(rank: int) -> tuple[torch.Tensor, ...]:
    """Rank r's logits, labels (7 ignored), teacher/student distances and an uneven mask."""
    n = (1000, 100)[rank]
    a = math.log(math.exp((1.0, 3.0)[rank]) - 1)  # 2 classes, target 0: CE = log(1 + e^a)
    logits = torch.tensor([0.0, a], dtype=torch.float64).reshape(1, 2, 1, 1).repeat(1, 1, 1, n + 7)
    target = torch.zeros(1, 1, n + 7, dtype=torch.long)
    target[..., n:] = 250                                    # 7 ignored pixels on each rank
    gen = torch.Generator().manual_seed(rank)
    teacher = torch.rand(1, 2, 1, n, generator=gen, dtype=torch.float64)
    student = torch.rand(1, 2, 1, n, generator=gen, dtype=torch.float64)
    mask = torch.rand(1, 2, 1, n, generator=gen) < (0.9, 0.2)[rank]
    return logits, target, teacher, student, mask


def test_ddp_masked_losses_are_global_batch_means(tmp_path):
    """Two gloo ranks: the mean of the ranks' losses is the one mean over both ranks' pixels
    (1000 px at 1.0 + 100 px at 3.0 give 1.18, not 2.0) and DDP's averaged gradients are those
    of that mean; without ``ddp`` nothing changes on one process."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "r")
    mp.spawn(_masked_losses, args=(2, f"file://{tmp_path / 'pg'}", out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    parts = [_uneven_batch(r) for r in range(2)]
    logits = torch.cat([p[0] for p in parts], dim=-1).requires_grad_(True)
    target = torch.cat([p[1] for p in parts], dim=-1)
    teacher, student, mask = (torch.cat([p[i] for p in parts], dim=-1) for i in (2, 3, 4))
    student.requires_grad_(True)
    whole = [(losses.cross_entropy(logits, target), logits, [1007, 107]),
             (losses.symmetric_ce(logits, target, 0.1, 1.0), logits, [1007, 107]),
             (losses.prototype_consistency(teacher, student, mask, 2.0), student, [1000, 100])]
    assert whole[0][0].item() == pytest.approx((1000 * 1.0 + 100 * 3.0) / 1100, rel=1e-9)
    for i, (loss, x, sizes) in enumerate(whole):
        assert (ranks[0]["values"][i] + ranks[1]["values"][i]) / 2 == pytest.approx(loss.item(), rel=1e-9)
        (g,) = torch.autograd.grad(loss, x)
        for r, expected in enumerate(torch.split(g, sizes, dim=-1)):
            torch.testing.assert_close(ranks[r]["grads"][i], expected, rtol=1e-9, atol=1e-12)
    x, y = parts[0][0], parts[0][1]
    assert losses.cross_entropy(x, y, ddp=True).item() == losses.cross_entropy(x, y).item()
