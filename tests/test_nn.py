"""mpiopt.nn (flat buffers, partitioning, models, update rule) and the MNIST/CIFAR-10 loaders."""
import gzip
import math
import os

import numpy as np
import pytest

import torch

from mpiopt.errors import InputError
from mpiopt.nn.flat import FlatModel, partition_elements, partition_tensors
from mpiopt.nn.models import build_model
from mpiopt.nn.train import add_penalties, loss_and_grad, momentum_delta, recalibrate_batchnorm, step_size


def test_flat_views_survive_backward_and_get_writes_land_in_model():
    torch.manual_seed(0)
    f = FlatModel(build_model("cnn", (1, 8, 8), 10, seed=3))
    assert f.n == sum(p.numel() for p in f.params) == 13706
    X, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss = loss_and_grad(f, X, y)
    assert math.isfinite(loss) and f.views_intact()
    ref = [p.grad.clone() for p in f.params]
    assert np.abs(f.grad_np).sum() > 0
    loss_and_grad(f, X, y)                      # zeroed in place, not accumulated
    for p, r in zip(f.params, ref):
        assert torch.allclose(p.grad, r)
    f.flat_np[:] = 0.5                          # what an RMA Get into the buffer does
    assert all(bool((p.data == 0.5).all()) for p in f.params)


def test_same_seed_same_weights_and_layout_hash():
    a = FlatModel(build_model("mlp", (1, 8, 8), 10, seed=1))
    b = FlatModel(build_model("mlp", (1, 8, 8), 10, seed=1))
    c = FlatModel(build_model("mlp", (1, 8, 8), 10, seed=2))
    assert np.array_equal(a.flat_np, b.flat_np) and not np.array_equal(a.flat_np, c.flat_np)
    assert a.layout_hash() == c.layout_hash()
    assert a.layout_hash() != FlatModel(build_model("cnn", (1, 8, 8), 10)).layout_hash()


def test_partition_at_tensor_boundaries_minimises_largest_block():
    sizes = [144, 16, 4608, 32, 8192, 64, 640, 10]
    parts = partition_tensors(sizes, 3)
    bounds = set(np.concatenate([[0], np.cumsum(sizes)]).tolist())
    assert parts[0][0] == 0 and parts[-1][1] == sum(sizes)
    assert all(a in bounds and b in bounds and a < b for a, b in parts)
    assert all(parts[i][1] == parts[i + 1][0] for i in range(2))
    assert max(b - a for a, b in parts) == 8192          # the largest tensor alone: optimal
    assert partition_tensors([5, 5], 3) == [(0, 5), (5, 10), (10, 10)]
    big = partition_tensors(list(range(1, 41)), 4)
    assert max(b - a for a, b in big) <= 1.15 * sum(range(1, 41)) / 4


def test_passm_blocks_balanced_by_parameter_count_on_resnet18_at_10_workers():
    """Blocks cut tensors where needed: max/min block size near 1 (whole tensors only: 1 k to 2.36 M)."""
    sizes = [s.size for s in FlatModel(build_model("resnet18", (3, 32, 32), 10)).slots]
    n = sum(sizes)
    ranges = partition_elements(n, 10)
    lens = [b - a for a, b in ranges]
    assert ranges[0][0] == 0 and ranges[-1][1] == n and all(ranges[i][1] == ranges[i + 1][0] for i in range(9))
    assert max(lens) / min(lens) < 1.0001
    whole = [b - a for a, b in partition_tensors(sizes, 10)]
    assert max(whole) / min(whole) > 2                   # what whole-tensor blocks give on this model


def test_partial_backward_on_a_block_that_cuts_tensors():
    f = FlatModel(build_model("cnn", (1, 8, 8), 10, seed=0))
    lo, hi = partition_elements(f.n, 3)[1]
    f.set_trainable(lo, hi)
    loss_and_grad(f, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert np.abs(f.grad_np[lo:hi]).sum() > 0 and np.count_nonzero(f.grad_np[lo:hi]) > 0.5 * (hi - lo)
    first = next(s for s in f.slots if s.offset + s.size > lo)      # tensors wholly outside get none
    assert not f.grad_np[:first.offset].any()


def test_partial_backward_only_owned_tensors_get_gradients():
    f = FlatModel(build_model("cnn", (1, 8, 8), 10, seed=0))
    lo, hi = partition_tensors([s.size for s in f.slots], 3)[1]
    f.set_trainable(lo, hi)
    loss_and_grad(f, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert np.abs(f.grad_np[lo:hi]).sum() > 0
    assert not f.grad_np[:lo].any() and not f.grad_np[hi:].any()


def test_resnet18_paper_size_and_small_width_with_batchnorm():
    assert FlatModel(build_model("resnet18", (3, 32, 32), 10)).n == 11173962
    f = FlatModel(build_model("resnet18", (3, 32, 32), 10, width=4))
    X = torch.randn(6, 3, 32, 32) * 2 + 1
    loss_and_grad(f, X, torch.randint(0, 10, (6,)))
    assert f.views_intact()
    recalibrate_batchnorm(f.module, [X])
    bn = f.module.bn1
    x0 = f.module.conv1(X)
    assert torch.allclose(bn.running_mean, x0.mean((0, 2, 3)), atol=1e-5)
    assert f.buffers_vector().size > 0


def test_update_formulas_by_hand():
    assert step_size(0.5, 0.9, 4) == pytest.approx(0.9 * 0.5 / 2)
    x = np.array([1.0, -2.0, 0.0], np.float32)
    g = np.array([0.1, 0.1, 0.1], np.float32)
    add_penalties(g, x, 0.01, 0.001)
    assert np.allclose(g, [0.1 + 0.01 + 0.001, 0.1 - 0.02 - 0.001, 0.1])
    u = np.array([1.0, 1.0, 1.0], np.float32)
    out = np.empty(3, np.float32)
    momentum_delta(u, g, 0.9, 0.5, out)
    assert np.allclose(u, 0.9 + g) and np.allclose(out, -(0.1) * 0.5 * (0.9 + g))


def test_one_worker_update_matches_torch_sgd_step_by_step():
    """c = 1: u = m u + g, x -= (1-m) step u equals torch.optim.SGD(momentum=m, lr=(1-m) step, wd)."""
    m, gamma, alpha, wd = 0.9, 0.3, 0.95, 5e-4
    ours = FlatModel(build_model("mlp", (1, 8, 8), 10, width=16, seed=4))
    ref = build_model("mlp", (1, 8, 8), 10, width=16, seed=4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=m, weight_decay=wd)
    u = np.zeros(ours.n, np.float32)
    delta = np.empty(ours.n, np.float32)
    gen = torch.Generator().manual_seed(0)
    for k in range(1, 8):
        X, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss_and_grad(ours, X, y)
        add_penalties(ours.grad_np, ours.flat_np, wd, 0.0)
        momentum_delta(u, ours.grad_np, m, step_size(gamma, alpha, k), delta)
        ours.flat_np += delta
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(X), y).backward()
        opt.param_groups[0]["lr"] = (1 - m) * step_size(gamma, alpha, k)
        opt.step()
        flat_ref = torch.cat([p.detach().reshape(-1) for p in ref.parameters()]).numpy()
        assert np.allclose(ours.flat_np, flat_ref, rtol=1e-5, atol=1e-6), k


# -- loaders --------------------------------------------------------------------------------------------
def _write_mnist(folder, n_train=30, n_test=10, gz=False):
    from mpiopt.data.mnist import write_idx
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    data = {}
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        X = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(os.path.join(folder, f"{stem}-images-idx3-ubyte{sfx}"), X)
        write_idx(os.path.join(folder, f"{stem}-labels-idx1-ubyte{sfx}"), y)
        data[split] = (X, y)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path, gz):
    from mpiopt.data.mnist import load_mnist
    data = _write_mnist(str(tmp_path), gz=gz)
    X, y = load_mnist(str(tmp_path), "train")
    assert X.shape == (30, 28, 28) and np.array_equal(X, data["train"][0]) and np.array_equal(y, data["train"][1])
    # the header is big-endian: magic 2051 then count, rows, cols
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read() if gz else (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    assert raw[:4] == (2051).to_bytes(4, "big") and int.from_bytes(raw[4:8], "big") == 10


def test_mnist_bad_files_name_the_file(tmp_path):
    from mpiopt.data.mnist import load_mnist
    _write_mnist(str(tmp_path))
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-3])                   # truncated
    with pytest.raises(InputError, match="train-labels-idx1-ubyte"):
        load_mnist(str(tmp_path), "train")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x01\x00" + b"\x00" * 12)
    with pytest.raises(InputError, match="magic"):
        load_mnist(str(tmp_path), "test")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        load_mnist(str(tmp_path / "empty"), "test")


def test_cifar_python_batches_roundtrip_and_errors(tmp_path):
    from mpiopt.data.cifar import load_cifar10, write_batch
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    imgs = {}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        X = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, 4)
        write_batch(str(folder / name), X, y)
        imgs[name] = (X, y)
    X, y = load_cifar10(str(tmp_path), "train")
    assert X.shape == (20, 3, 32, 32) and np.array_equal(X[4:8], imgs["data_batch_2"][0])
    assert np.array_equal(y[:4], imgs["data_batch_1"][1])
    # channel planes: the first 1024 bytes of a row are the red 32x32 plane, row-major
    import pickle
    raw = pickle.load(open(folder / "test_batch", "rb"), encoding="bytes")[b"data"]
    assert np.array_equal(raw[0, :1024].reshape(32, 32), imgs["test_batch"][0][0, 0])
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="data_batch_3"):
        load_cifar10(str(tmp_path), "train")


def test_problems_load_and_validate(tmp_path):
    from mpiopt.comm import world
    from mpiopt.problems.torch_models import Cifar10, Digits, Mnist
    d = Digits({"model": "cnn", "width": 0, "n_train": 0, "n_test": 0, "seed": 0, "test_fraction": 0.2}, world())
    d.setup()
    assert d.n_train + d.n_test == 1797 and d.in_shape == (1, 8, 8)
    X, y = d.train_batch(np.arange(d.n_train))
    assert abs(float(X.mean())) < 1e-4 and abs(float(X.std()) - 1) < 1e-3
    _write_mnist(str(tmp_path))
    m = Mnist({"path": str(tmp_path), "model": "mlp", "width": 8, "n_train": 20, "n_test": 0, "seed": 0}, world())
    m.setup()
    assert m.n_train == 20 and m.n_test == 10 and m.in_shape == (1, 28, 28)
    bad = Mnist({"path": str(tmp_path), "model": "resnet18", "width": 0, "n_train": 0, "n_test": 0, "seed": 0}, world())
    with pytest.raises(InputError, match="32x32"):
        bad.setup()
    with pytest.raises(InputError, match="problem.path"):
        Cifar10({"path": None, "model": "resnet18", "width": 0, "n_train": 0, "n_test": 0, "seed": 0}, world()).setup()


def test_batchnorm_statistics_are_views_of_one_vector():
    """cnn_bn: running mean/var live in ``stats`` (forward passes move it, a write into it lands in
    the module); the layout hash covers them; num_batches_tracked stays a module buffer."""
    f = FlatModel(build_model("cnn_bn", (1, 8, 8), 10, width=4, seed=0))
    assert f.n_stats == 2 * (4 + 8) and [s.name for s in f.stat_slots][0] == "1.running_mean"
    assert FlatModel(build_model("cnn", (1, 8, 8), 10, width=4)).n_stats == 0
    old = f.stats_np.copy()
    f.module.train()
    f.module(torch.randn(16, 1, 8, 8))
    assert f.stats_intact() and not np.array_equal(f.stats_np, old)
    bn = f.module[1]
    assert np.allclose(f.stats_np[:4], bn.running_mean.numpy()) and int(bn.num_batches_tracked) == 1
    f.load(f.flat_np.copy(), np.full(f.n_stats, 2.0, np.float32))
    assert bool((bn.running_var == 2.0).all()) and f.stats_intact()
    assert f.state_np.size == f.n + f.n_stats                          # [parameters | statistics] in one buffer
    f.state_np[f.n:] = 3.0                                             # what one Get of both does
    f.state_np[0] = 7.0
    assert bool((bn.running_mean == 3.0).all()) and float(f.params[0].data.reshape(-1)[0]) == 7.0
    recalibrate_batchnorm(f.module, [torch.randn(8, 1, 8, 8)])         # resets in place: still views
    assert f.stats_intact() and not (f.stats_np == 2.0).all()
    g = FlatModel(build_model("cnn_bn", (1, 8, 8), 10, width=8))
    assert f.layout_hash() != g.layout_hash()
    assert f.layout_hash() != FlatModel(build_model("cnn", (1, 8, 8), 10, width=4)).layout_hash()
