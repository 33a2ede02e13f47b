"""Prototype maths checked against explicit loops / hand-computed values on tiny tensors."""
import math

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from proda import prototypes as P
from proda.integrity import DamagedArtifactError

torch.set_num_threads(1)


def np_distance(feat: np.ndarray, protos: np.ndarray) -> np.ndarray:
    n, _, h, w = feat.shape
    out = np.zeros((n, protos.shape[0], h, w))
    for i in range(n):
        for k in range(protos.shape[0]):
            for y in range(h):
                for x in range(w):
                    out[i, k, y, x] = math.sqrt(sum((feat[i, :, y, x] - protos[k]) ** 2))
    return out


# ----------------------------------------------------------------------------- distances

def test_distance_hand_example():
    feat = torch.tensor([[0.0, 3.0], [0.0, 4.0]]).reshape(1, 2, 1, 2)  # f1=(0,0), f2=(3,4)
    protos = torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0]])
    expected = torch.tensor([[0.0, 5.0], [3.0, 4.0], [10.0, 5.0]]).reshape(1, 3, 1, 2)
    got = P.prototype_distance(feat, protos)
    assert got.shape == (1, 3, 1, 2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_distance_matches_loop():
    rng = np.random.default_rng(1)
    feat, protos = rng.normal(size=(2, 3, 2, 3)), rng.normal(size=(4, 3))
    got = P.prototype_distance(torch.from_numpy(feat), torch.from_numpy(protos))
    np.testing.assert_allclose(got.numpy(), np_distance(feat, protos), rtol=1e-12)


def test_distance_gradients_match_autograd_of_explicit_norm():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=g, requires_grad=True)
    protos = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(P.prototype_distance, (feat, protos))


def test_distance_gradient_finite_where_feature_equals_prototype():
    protos = torch.tensor([[1.0, 2.0], [4.0, 6.0]], dtype=torch.float64)
    feat = torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(1, 2, 1, 1).requires_grad_(True)
    P.prototype_distance(feat, protos).sum().backward()
    # d_0 = 0 contributes 0; d_1 = 5 contributes (f - η_1) / 5 = (-3, -4) / 5
    assert torch.allclose(feat.grad.flatten(), torch.tensor([-0.6, -0.8], dtype=torch.float64))


def groupnorm_like_features(n=2, d=256, h=24, w=40, n_class=19, seed=0):
    """Features shaped like DeepLabV2's ``feat`` (GroupNorm + affine: values of size 1-10),
    with class structure, and prototypes = the class means (as the moving update keeps them)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_class, d, generator=g) * 1.5
    cells = n * (h // 4) * (w // 4)  # every class present
    coarse = (torch.randperm(cells, generator=g) % n_class).view(n, 1, h // 4, w // 4).float()
    labels = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    x = centres[labels].permute(0, 3, 1, 2) + torch.randn(n, d, h, w, generator=g)
    x = torch.nn.functional.group_norm(x, 32)
    gamma, beta = torch.rand(d, generator=g) * 2.5 + 0.5, torch.randn(d, generator=g) * 2
    x = x * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    flat = x.permute(0, 2, 3, 1)
    protos = torch.stack([flat[labels == k].mean(0) for k in range(n_class)])
    return x.contiguous(), protos


def loop_distance(feat: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.norm(feat - p.view(1, -1, 1, 1), dim=1) for p in protos], dim=1)


@pytest.mark.parametrize("scale", [0.2, 1.0, 5.0])
def test_distance_float32_error_bound_against_float64(scale):
    feat, protos = groupnorm_like_features()
    feat, protos = feat * scale, protos * scale
    ref = loop_distance(feat.double(), protos.double())
    got = P.prototype_distance(feat, protos)
    assert got.dtype == torch.float32
    err = (got.double() - ref).abs()
    assert (err / ref).max() < 4e-6  # relative bound, any scale
    if scale == 1:  # realistic magnitudes: values of size 1-10, d from ~14 to ~50
        assert feat.abs().max() > 5 and 10 < ref.min() and ref.max() < 60
    if scale <= 1:
        assert err.max() < 1e-4
        loop32 = (loop_distance(feat, protos).double() - ref).abs().max()
        assert err.max() < 2 * loop32 + 1e-6  # as accurate as the float32 class loop
    assert torch.equal(got.argmin(1), ref.argmin(1))


def test_distance_float32_gradient_matches_float64():
    feat, protos = groupnorm_like_features(h=16, w=24)
    g = torch.Generator().manual_seed(1)
    upstream = torch.rand(feat.shape[0], protos.shape[0], *feat.shape[2:], generator=g)
    grads = []
    for dtype, fn in ((torch.float32, P.prototype_distance), (torch.float64, loop_distance)):
        f = feat.detach().to(dtype, copy=True).requires_grad_(True)
        p = protos.detach().to(dtype, copy=True).requires_grad_(True)
        (fn(f, p) * upstream.to(dtype)).sum().backward()
        grads.append((f.grad.double(), p.grad.double()))
    (gf, gp), (rf, rp) = grads
    assert (gf - rf).abs().max() < 1e-4 * rf.abs().max()
    assert (gp - rp).abs().max() < 1e-4 * rp.abs().max()


def test_distance_is_float32_under_autocast():
    feat, protos = groupnorm_like_features(h=16, w=24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = P.prototype_distance(feat, protos)
    assert got.dtype == torch.float32 and torch.equal(got, P.prototype_distance(feat, protos))


def test_distance_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="prototype_distance"):
        P.prototype_distance(torch.zeros(1, 3, 2, 2), torch.zeros(4, 2))


# ----------------------------------------------------------------------------- rectification

def test_rectification_weights_softmax_and_min_invariance():
    rng = np.random.default_rng(2)
    feat, protos, temp = rng.normal(size=(1, 2, 2, 2)), rng.normal(size=(3, 2)), 1.7
    d = np_distance(feat, protos)
    e = np.exp(-temp * d)
    expected = e / e.sum(axis=1, keepdims=True)          # softmax without the min subtraction
    got = P.rectification_weights(torch.from_numpy(feat), torch.from_numpy(protos), temp)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_weights_from_distances_equal_rectification_weights():
    feat, protos = groupnorm_like_features(h=16, w=24)
    dist = P.prototype_distance(feat, protos)
    assert torch.equal(P.weights_from_distances(dist, 0.7), P.rectification_weights(feat, protos, 0.7))


def test_rectification_weights_stable_for_large_distances():
    feat = torch.full((1, 2, 1, 1), 1e4)
    protos = torch.tensor([[0.0, 0.0], [1e4, 1e4 - 1.0]])
    w = P.rectification_weights(feat, protos, 1.0).flatten()
    assert torch.allclose(w, torch.tensor([0.0, 1.0]), atol=1e-6)  # plain exp would be 0/0


def test_rectify_pseudo_labels_and_threshold():
    soft = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.2, 0.1], [0.2, 0.6, 0.8]]).reshape(1, 3, 1, 3)
    weights = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.2, 0.05], [0.1, 0.3, 0.05]]).reshape(1, 3, 1, 3)
    r = [[0.5 * 0.2, 0.3 * 0.7, 0.2 * 0.1], [0.2 * 0.5, 0.2 * 0.2, 0.6 * 0.3],
         [0.1 * 0.9, 0.1 * 0.05, 0.8 * 0.05]]  # per pixel
    labels_exp = [int(np.argmax(row)) for row in r]
    conf_exp = [max(row) / sum(row) for row in r]
    labels, conf = P.rectify_pseudo_labels(soft, weights)
    assert labels.dtype == torch.int64 and labels.shape == (1, 1, 3)
    assert labels.flatten().tolist() == labels_exp == [1, 2, 0]
    assert torch.allclose(conf.flatten(), torch.tensor(conf_exp), rtol=1e-6)
    cut = (conf_exp[0] + conf_exp[2]) / 2
    assert min(conf_exp[0], conf_exp[2]) < cut < max(conf_exp[0], conf_exp[2])
    labels, _ = P.rectify_pseudo_labels(soft, weights, threshold=cut)
    expected = [lab if c >= cut else 250 for lab, c in zip(labels_exp, conf_exp)]
    assert labels.flatten().tolist() == expected and 250 in expected
    at_conf, _ = P.rectify_pseudo_labels(soft, weights, threshold=conf[0, 0, 0].item())
    assert at_conf[0, 0, 0].item() == labels_exp[0]  # conf == threshold is kept (strict <)


# ----------------------------------------------------------------------------- class means

def loop_class_means(feat, logits, labels, min_pixels):
    vectors, ids = [], []
    n, c = logits.shape[:2]
    pred = logits.argmax(axis=1)
    for i in range(n):
        for k in range(c):
            sel = pred[i] == k
            if labels is not None:
                sel &= labels[i] == k
            if sel.sum() == 0 or sel.sum() < min_pixels:
                continue
            v = feat[i][:, sel].mean(axis=1)
            if v.sum() == 0:
                continue
            vectors.append(v)
            ids.append(k)
    return np.array(vectors).reshape(-1, feat.shape[1]), ids


def class_mean_inputs():
    # N=2, D=2, H=W=3; argmax maps chosen by hand
    pred = np.array([[[0, 0, 1], [1, 1, 2], [0, 2, 2]],
                     [[2, 2, 2], [2, 0, 0], [1, 2, 2]]])
    logits = np.eye(3)[pred].transpose(0, 3, 1, 2) * 3.0
    feat = np.arange(36, dtype=np.float64).reshape(2, 2, 3, 3) / 7.0
    # sample 1, class 0 (pixels (1,1),(1,2)): features summing to exactly 0
    feat[1, 0, 1, 1:] = [1.0, 2.0]
    feat[1, 1, 1, 1:] = [-1.0, -2.0]
    return feat, logits


def test_class_mean_vectors_default_min_pixels_skips_small_classes():
    feat, logits = class_mean_inputs()
    vectors, ids = P.class_mean_vectors(torch.from_numpy(feat), torch.from_numpy(logits))
    assert vectors.shape == (0, 2) and ids.numel() == 0  # every class has < 10 pixels


@pytest.mark.parametrize("min_pixels", [1, 3])
def test_class_mean_vectors_match_loop(min_pixels):
    feat, logits = class_mean_inputs()
    vectors, ids = P.class_mean_vectors(torch.from_numpy(feat), torch.from_numpy(logits),
                                        min_pixels=min_pixels)
    exp_v, exp_ids = loop_class_means(feat, logits, None, min_pixels)
    assert ids.tolist() == exp_ids
    np.testing.assert_allclose(vectors.numpy(), exp_v, rtol=1e-6)
    if min_pixels == 1:
        assert exp_ids == [0, 1, 2, 1, 2]  # sample 1 class 0 sums to 0 and is skipped
    else:
        assert exp_ids == [0, 1, 2, 2]


def test_first_argmax_matches_torch_argmax_with_ties():
    g = torch.Generator().manual_seed(4)
    probs = torch.randint(0, 4, (3, 7, 5, 6), generator=g).float()  # many ties
    assert torch.equal(P._first_argmax(probs), probs.argmax(dim=1))


def test_class_mean_vector_summing_exactly_to_zero_is_skipped():
    """The official update skips a mean vector whose elements sum to exactly 0 (§4.2 step 10)."""
    n_class, h, w = 3, 4, 5
    pred = torch.zeros(1, h, w, dtype=torch.long)
    pred[0, :2], pred[0, 2:] = 1, 2                   # 10 pixels of class 1, 10 of class 2
    logits = torch.nn.functional.one_hot(pred, n_class).permute(0, 3, 1, 2).float() * 5
    feat = torch.zeros(1, 3, h, w)
    feat[0, 0, :2], feat[0, 1, :2] = 2.0, -0.5        # class 1: mean (2, -0.5, -1.5), sums to 0
    feat[0, 2, :2] = -1.5
    feat[0, :, 2:] = torch.tensor([1.0, 0.0, -1.0]).view(3, 1, 1)
    feat[0, 2, 3, 0] = 9.0                            # class 2: mean sums to 0.9, kept
    vectors, ids = P.class_mean_vectors(feat, logits)
    assert ids.tolist() == [2]
    torch.testing.assert_close(vectors[0], feat[0, :, 2:].mean((1, 2)))
    protos = torch.ones(n_class, 3)
    moved = P.moving_update(protos, vectors, ids, 0.5)
    assert torch.equal(moved[1], protos[1]) and not torch.equal(moved[2], protos[2])
    # the same pixels with a vector summing to 1e-7 instead of 0 are kept
    feat[0, 2, :2] = -1.5 + 1e-7 * 8
    assert P.class_mean_vectors(feat, logits)[1].tolist() == [1, 2]


def test_class_mean_vectors_with_labels():
    feat, logits = class_mean_inputs()
    labels = np.array([[[0, 1, 1], [1, 250, 2], [0, 2, 250]],
                       [[2, 2, 0], [2, 0, 0], [1, 1, 2]]])
    vectors, ids = P.class_mean_vectors(torch.from_numpy(feat), torch.from_numpy(logits),
                                        torch.from_numpy(labels), min_pixels=2)
    exp_v, exp_ids = loop_class_means(feat, logits, labels, 2)
    assert ids.tolist() == exp_ids == [0, 1, 2, 2]
    np.testing.assert_allclose(vectors.numpy(), exp_v, rtol=1e-6)


def test_class_mean_vectors_rejects_size_mismatch():
    with pytest.raises(ValueError, match="class_mean_vectors"):
        P.class_mean_vectors(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 2, 2))


# ----------------------------------------------------------------------------- updates

UPDATE_IDS = [2, 0, 2, 1, 2, 0, 2]


def update_inputs():
    rng = np.random.default_rng(3)
    return rng.normal(size=(3, 4)), rng.normal(size=(len(UPDATE_IDS), 4))


def test_moving_update_matches_sequential_loop():
    protos, vectors = update_inputs()
    m = 0.3
    expected = protos.copy()
    for v, k in zip(vectors, UPDATE_IDS):
        expected[k] = (1 - m) * expected[k] + m * v
    got = P.moving_update(torch.from_numpy(protos), torch.from_numpy(vectors),
                          torch.tensor(UPDATE_IDS), m)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert not np.allclose(expected[2], ((1 - m) ** 4) * protos[2] + m * vectors[[0, 2, 4, 6]].sum(0))


def test_moving_update_float32_and_empty():
    protos, vectors = update_inputs()
    p32 = torch.from_numpy(protos).float()
    got = P.moving_update(p32, torch.from_numpy(vectors).float(), torch.tensor(UPDATE_IDS), 1e-4)
    assert got.dtype == torch.float32
    expected = protos.copy()
    for v, k in zip(vectors, UPDATE_IDS):
        expected[k] = 0.9999 * expected[k] + 1e-4 * v
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    same = P.moving_update(p32, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0.1)
    assert torch.equal(same, p32)
    with pytest.raises(ValueError, match="class ids"):
        P.moving_update(p32, torch.zeros(1, 4), torch.tensor([3]), 0.1)


def sequential_mean(protos, counts, vectors, ids, cap):
    protos, counts = protos.copy(), list(counts)
    for v, k in zip(vectors, ids):
        protos[k] = (protos[k] * counts[k] + v) / (counts[k] + 1)
        counts[k] = min(counts[k] + 1, cap)
    return protos, counts


@pytest.mark.parametrize("counts", [[0, 0, 0], [0, 2, 3], [1, 3, 2]])
def test_mean_update_matches_sequential_loop_with_cap(counts):
    protos, vectors = update_inputs()
    exp_p, exp_c = sequential_mean(protos, counts, vectors, UPDATE_IDS, cap=3)
    got_p, got_c = P.mean_update(torch.from_numpy(protos), torch.tensor(counts),
                                 torch.from_numpy(vectors), torch.tensor(UPDATE_IDS), cap=3)
    np.testing.assert_allclose(got_p.numpy(), exp_p, rtol=1e-12)
    assert got_c.tolist() == exp_c


def test_mean_update_uncapped_is_exact_mean_and_rejects_bad_counts():
    protos, vectors = update_inputs()
    got, counts = P.mean_update(torch.from_numpy(protos), torch.zeros(3, dtype=torch.long),
                                torch.from_numpy(vectors), torch.tensor(UPDATE_IDS))
    np.testing.assert_allclose(got[2].numpy(), vectors[[0, 2, 4, 6]].mean(0), rtol=1e-12)
    assert counts.tolist() == [2, 1, 4]
    with pytest.raises(ValueError, match="cap"):
        P.mean_update(torch.from_numpy(protos), torch.tensor([0, 5, 0]),
                      torch.from_numpy(vectors), torch.tensor(UPDATE_IDS), cap=3)


def test_accumulator_exact_mean_and_parity():
    _, vectors = update_inputs()
    v = torch.from_numpy(vectors)
    exact = P.PrototypeAccumulator(4, 4)
    parity = P.PrototypeAccumulator(4, 4, parity=True, cap=2)
    for chunk in (slice(0, 3), slice(3, 7)):
        exact.add(v[chunk], torch.tensor(UPDATE_IDS[chunk]))
        parity.add(v[chunk], torch.tensor(UPDATE_IDS[chunk]))
    protos, counts = exact.result()
    assert protos.dtype == torch.float32 and counts.tolist() == [2, 1, 4, 0]
    for k in range(3):
        rows = [i for i, c in enumerate(UPDATE_IDS) if c == k]
        np.testing.assert_allclose(protos[k].numpy(), vectors[rows].mean(0), rtol=1e-6)
    assert torch.equal(protos[3], torch.zeros(4))  # never seen
    exp_p, exp_c = sequential_mean(np.zeros((4, 4)), [0] * 4, vectors, UPDATE_IDS, cap=2)
    pp, pc = parity.result()
    np.testing.assert_allclose(pp.numpy(), exp_p, rtol=1e-6)
    assert pc.tolist() == exp_c == [2, 1, 2, 0]


# ----------------------------------------------------------------------------- initialisation

class FixedNet(nn.Module):
    """feat = the image channels, out = a fixed 1×1 projection (3 classes)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]).view(3, 3, 1, 1))
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return {"feat": x[:, :, ::2, ::2], "out": self.proj(x)[:, :, ::2, ::2]}


def make_batches():
    g = torch.Generator().manual_seed(4)
    return [{"img": torch.rand(2, 3, 4, 4, generator=g),
             "label": torch.randint(0, 3, (2, 4, 4), generator=g)} for _ in range(2)]


def test_compute_prototypes_mean_over_loader_and_passes():
    net, batches = FixedNet(), make_batches()
    protos, counts = P.compute_prototypes(net, batches, 3, passes=2, progress=False, min_pixels=1)
    assert net.training and set(net.seen_training) == {False}
    acc_v, acc_ids = [], []
    for b in batches:
        small = b["img"][:, :, ::2, ::2]
        v, ids = loop_class_means(small.numpy(), small.numpy(), None, 1)
        acc_v += list(v)
        acc_ids += ids
    acc_v = np.array(acc_v)
    for k in range(3):
        rows = [i for i, c in enumerate(acc_ids) if c == k]
        np.testing.assert_allclose(protos[k].numpy(), acc_v[rows].mean(0), rtol=1e-6)
        assert counts[k].item() == 2 * len(rows)


def test_compute_prototypes_source_uses_downsampled_labels():
    net, batches = FixedNet(), make_batches()
    protos, counts = P.compute_prototypes(net, batches, 3, source=True, progress=False, min_pixels=1)
    acc_v, acc_ids = [], []
    for b in batches:
        small = b["img"][:, :, ::2, ::2].numpy()
        v, ids = loop_class_means(small, small, b["label"][:, ::2, ::2].numpy(), 1)
        acc_v += list(v)
        acc_ids += ids
    acc_v = np.array(acc_v)
    for k in range(3):
        rows = [i for i, c in enumerate(acc_ids) if c == k]
        assert counts[k].item() == len(rows)
        if rows:
            np.testing.assert_allclose(protos[k].numpy(), acc_v[rows].mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="n_class"):
        P.compute_prototypes(net, batches, 5, progress=False)


# ----------------------------------------------------------------------------- HDF5 store

def test_prototype_store_round_trip(tmp_path):
    path = tmp_path / "sub" / "warmup.h5"
    protos = torch.randn(3, 4)
    counts = torch.tensor([5, 0, 2])
    P.save_prototypes(path, protos, counts, {"n_class": 3, "checkpoint_sha256": "ab12", "passes": 1})
    assert not (tmp_path / "sub" / "warmup.h5.tmp").exists()
    with h5py.File(path) as fh:
        assert fh["prototypes"].dtype == np.float32 and fh["counts"].dtype == np.int64
    got_p, got_c, attrs = P.load_prototypes(path)
    assert torch.equal(got_p, protos) and torch.equal(got_c, counts)
    assert attrs == {"n_class": 3, "checkpoint_sha256": "ab12", "passes": 1}


def test_prototype_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        P.load_prototypes(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as fh:
        fh.create_dataset("prototypes", data=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"bad\.h5.*'counts'"):
        P.load_prototypes(bad)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DamagedArtifactError, match=r"prototype file .*junk\.h5 is damaged"):
        P.load_prototypes(junk)
    with pytest.raises(ValueError, match="counts"):
        P.save_prototypes(tmp_path / "x.h5", torch.zeros(3, 4), torch.zeros(2))
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("dataset", ["prototypes", "counts"])
def test_random_bytes_in_a_prototype_file_are_refused_naming_the_file(tmp_path, dataset):
    """Both datasets carry a Fletcher-32 checksum: 64 random bytes in their data fail the read in
    one line naming the file, instead of training on garbage prototypes."""
    path = tmp_path / "prototypes.h5"
    P.save_prototypes(path, torch.randn(19, 64), torch.arange(19))
    with h5py.File(path) as fh:
        assert fh["prototypes"].fletcher32 and fh["counts"].fletcher32
        start = fh[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(np.random.default_rng(0).bytes(64))
    with pytest.raises(DamagedArtifactError) as err:
        P.load_prototypes(path)
    msg = str(err.value)
    assert msg.startswith(f"prototype file {path} is damaged (") and "\n" not in msg
    assert msg.endswith("delete it and rerun the step that wrote it")


def test_non_finite_prototypes_are_refused(tmp_path):
    path = tmp_path / "prototypes.h5"
    P.save_prototypes(path, torch.tensor([[0.0, math.nan], [1.0, 2.0]]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"prototypes\.h5: the prototypes hold NaN"):
        P.load_prototypes(path)
