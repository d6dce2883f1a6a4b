"""Kronecker factors against their definitions, sample by sample and position by position."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ewcexp.importance import kfac
from ewcexp.importance.fisher import _signals, signal_count
from ewcexp.importance.kfac import add_gram, homogeneous, kronecker_factors, mirrored


def signals(estimator, labels, generator=None):
    def signals_for(logits, rows):
        return _signals(logits.softmax(-1), labels[rows], estimator, generator)

    return signals_for


class Net(nn.Module):
    """A strided, dilated convolution with a bias, one without, and two Linear layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 3, 3, stride=2, dilation=2, padding=2)
        self.conv2 = nn.Conv2d(3, 4, 2, bias=False)
        self.fc1 = nn.Linear(4 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def per_sample_terms(model, images, labels, estimator, layer):
    """For each sample: its layer input rows ā_t and, per label with its weight, the output
    gradients g_t of −log p: by a forward and backward pass per sample and label."""
    captured = {}
    hook = layer.register_forward_hook(lambda m, i, o: captured.update(x=i[0], out=o))
    try:
        for n in range(len(images)):
            logits = model(images[n : n + 1])
            log_probs = logits.log_softmax(-1)[0]
            probs = log_probs.detach().exp()
            labels_weights = (
                [(c, float(probs[c])) for c in range(len(probs))]
                if estimator == "exact"
                else [(int(labels[n]), 1.0)]
            )
            grads = [
                (torch.autograd.grad(-log_probs[c], captured["out"], retain_graph=True)[0][0], w)
                for c, w in labels_weights
            ]
            yield captured["x"][0].detach(), grads
    finally:
        hook.remove()


def patches_by_hand(conv, x):
    """The input patch each output position sees, by slicing: [positions, C·kh·kw]."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (
        conv.kernel_size,
        conv.stride,
        conv.dilation,
        conv.padding,
    )
    padded = F.pad(x, (pw, pw, ph, ph))
    rows = []
    height = (padded.shape[1] - dh * (kh - 1) - 1) // sh + 1
    width = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
    for i in range(height):
        for j in range(width):
            window = padded[
                :,
                i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                j * sw : j * sw + dw * (kw - 1) + 1 : dw,
            ]
            rows.append(window.flatten())
    return torch.stack(rows)


def recording_drawn_labels(drawn, generator):
    """`sample`'s signals, writing each sample's drawn label into `drawn`: the signal
    onehot(y) − p is largest at y."""

    def signals_for(logits, rows):
        out = _signals(logits.softmax(-1), drawn[rows], "sample", generator)
        drawn[rows] = out[0].argmax(-1)
        return out

    return signals_for


@pytest.mark.parametrize("estimator", ["exact", "sample", "empirical"])
def test_factors_equal_their_sums_over_samples_and_positions(estimator):
    """For `sample`, the sums use the labels the estimator drew (a label per sample, as
    `empirical` uses the true ones)."""
    model = Net().eval()
    images, labels = torch.randn(7, 2, 9, 9), torch.randint(0, 5, (7,))
    signals_for = signals(estimator, labels)
    if estimator == "sample":
        labels = torch.full_like(labels, -1)
        signals_for = recording_drawn_labels(labels, torch.Generator().manual_seed(3))
    factors = kronecker_factors(
        model, images, signals_for, active=slice(0, 5),
        signals_per_sample=signal_count(estimator, slice(0, 5)), chunk_size=3,
    )  # fmt: skip
    if estimator == "sample":
        assert (labels >= 0).all() and len(labels.unique()) > 1  # every sample drew a label
        estimator = "empirical"  # one signal per sample, at the recorded labels
    params = list(model.parameters())
    by_layer = {id(params[f.weight]): f for f in factors}
    for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
        a_sum, g_sum, positions = 0, 0, 1
        for x, grads in per_sample_terms(model, images, labels, estimator, layer):
            rows = x[None] if isinstance(layer, nn.Linear) else patches_by_hand(layer, x)
            positions = len(rows)
            a = homogeneous(rows, layer.bias is not None)
            a_sum = a_sum + a.T @ a
            for g, weight in grads:  # g: [out] or [out, H, W]
                per_position = g[None] if isinstance(layer, nn.Linear) else g.flatten(1).T
                g_sum = g_sum + weight * per_position.T @ per_position
        found = by_layer[id(layer.weight)]
        torch.testing.assert_close(found.A, a_sum / (len(images) * positions), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(found.G, g_sum / len(images), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("width", [1, 5, 8, 9, 23, 40])
def test_gram_fills_the_upper_triangle_and_mirrors_it(monkeypatch, width):
    """The recursive halving (leaves of 4 columns here) adds rowsᵀ rows, and accumulates."""
    monkeypatch.setattr(kfac, "GRAM_LEAF", 4)
    rows, more = torch.randn(30, width, dtype=torch.float64), torch.randn(7, width).double()
    total = torch.zeros(width, width, dtype=torch.float64)
    add_gram(total, rows)
    add_gram(total, more)
    torch.testing.assert_close(mirrored(total), rows.T @ rows + more.T @ more)
    half = width // 2
    if width > 4:  # the block below the first split is never computed, only mirrored
        assert not total[half:, :half].any()


def test_one_sample_linear_block_is_the_per_sample_outer_product():
    """For one sample and a Linear layer, A ⊗ G is exactly vec(∇W̄) vec(∇W̄)ᵀ (column-stacking
    vec, W̄ = [W, b]): the approximation is exact there."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5)).eval()
    image, label = torch.randn(1, 4), torch.tensor([2])
    (first, _) = kronecker_factors(
        model, image, signals("empirical", label), active=slice(0, 5), signals_per_sample=1
    )
    loss = F.cross_entropy(model(image), label)
    weight_grad, bias_grad = torch.autograd.grad(loss, [model[0].weight, model[0].bias])
    gradient = torch.cat([weight_grad, bias_grad[:, None]], 1).T.flatten()  # column-stacking vec
    torch.testing.assert_close(torch.kron(first.A, first.G), torch.outer(gradient, gradient))


def dense_penalty(params, anchor, blocks, stiffness, strength, damping=0.0):
    """Σ diagonal K(θ−θ*)² + Σ_blocks λ·vec(ΔW̄)ᵀ (A⊗G + √d(A⊗I + I⊗G) + d·I) vec(ΔW̄): the
    damped block as the README writes it, built explicitly (column-stacking vec, undamped
    factors), differentiable."""
    total = 0
    for p, a, k in zip(params, anchor, stiffness, strict=True):
        if k is not None:
            total = total + (k * (p - a) ** 2).sum()
    root = damping**0.5
    for block in blocks:
        difference = (params[block.weight] - anchor[block.weight]).reshape(len(block.G), -1)
        if block.bias is not None:
            difference = torch.cat(
                [difference, (params[block.bias] - anchor[block.bias])[:, None]], 1
            )
        v = difference.T.flatten()
        eye_a, eye_g = (torch.eye(len(f), dtype=f.dtype) for f in (block.A, block.G))
        matrix = (
            torch.kron(block.A, block.G)
            + root * (torch.kron(block.A, eye_g) + torch.kron(eye_a, block.G))
            + damping * torch.eye(len(v), dtype=v.dtype)
        )
        total = total + strength * (v @ matrix @ v)
    return total


def random_spd(size, generator):
    m = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return m @ m.T / size + 0.1 * torch.eye(size, dtype=torch.float64)


def kfac_tasks(generator, num_tasks, damping=0.0):
    """A conv (with bias), a bias-free Linear, a plain Linear and a BatchNorm-like vector;
    per task a KroneckerImportance (damped by `damping`) and an anchor."""
    from ewcexp.importance.kfac import Factors, KroneckerImportance

    shapes = [(3, 2, 2, 2), (3,), (4, 3), (5, 4), (5,), (6,)]
    tasks = []
    for _ in range(num_tasks):
        blocks = [
            Factors(0, 1, random_spd(2 * 2 * 2 + 1, generator), random_spd(3, generator)),
            Factors(2, None, random_spd(3, generator), random_spd(4, generator)),
            Factors(3, 4, random_spd(4 + 1, generator), random_spd(5, generator)),
        ]
        diagonal = [None] * 5 + [torch.rand(6, generator=generator, dtype=torch.float64)]
        anchor = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
        tasks.append((KroneckerImportance(diagonal, blocks, damping), anchor))
    params = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    return tasks, params


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_kronecker_penalty_value_and_gradient_equal_the_dense_quadratic(damping):
    """(λ/2)·tr(ΔW̄ᵀ G ΔW̄ A) per block = (λ/2)·vec(ΔW̄)ᵀ(A⊗G)vec(ΔW̄), and with damping d the
    README's damped block A⊗G + √d(A⊗I + I⊗G) + d·I; the gradient written before backward
    (first task written, later ones added) equals autograd of the dense form; a checkpoint's
    state rebuilds the same penalty."""
    from ewcexp.strategy.ewc import EWC

    generator = torch.Generator().manual_seed(0)
    tasks, params = kfac_tasks(generator, 2, damping)
    strategy = EWC(strength=3.0)
    for importance, anchor in tasks:
        strategy.consolidate(anchor, importance)
    leaves = [p.clone().requires_grad_() for p in params]
    dense = (
        sum(
            dense_penalty(
                leaves,
                anchor,
                imp.blocks,
                [None if k is None else k * 3.0 for k in imp.diagonal],
                3.0,
                damping,
            )
            for imp, anchor in tasks
        )
        / 2
    )
    assert strategy.penalty_value(params) == pytest.approx(float(dense.detach()), rel=1e-10)
    want = torch.autograd.grad(dense, leaves)
    written = [p.clone() for p in params]
    strategy.write_penalty_gradient(written)
    for got, expected in zip([p.grad for p in written], want, strict=True):
        torch.testing.assert_close(got, expected)
    restored = EWC(strength=3.0)
    restored.load_state_dict(strategy.state_dict())
    assert restored.penalty_value(params) == strategy.penalty_value(params)


def nearest_by_svd(dense, m, n):
    """The nearest Kronecker product to a dense (m·n)² matrix, by brute force: its entries
    rearranged into an m² × n² matrix whose leading singular pair gives it."""
    rearranged = dense.reshape(m, n, m, n).permute(0, 2, 1, 3).reshape(m * m, n * n)
    u, s, vh = torch.linalg.svd(rearranged)
    best = s[0] * torch.outer(u[:, 0], vh[0])
    return best.reshape(m, m, n, n).permute(0, 2, 1, 3).reshape(m * n, m * n)


def test_nearest_kronecker_product_is_the_leading_singular_pair_and_exact_when_factors_agree():
    from ewcexp.importance.kfac import nearest_kronecker

    generator = torch.Generator().manual_seed(3)
    pairs = [(random_spd(3, generator), random_spd(4, generator)) for _ in range(3)]
    dense = sum(torch.kron(a, g) for a, g in pairs)
    a, g = nearest_kronecker(pairs)
    torch.testing.assert_close(torch.kron(a, g), nearest_by_svd(dense, 3, 4))
    assert torch.linalg.eigvalsh(a).min() > 0 and torch.linalg.eigvalsh(g).min() > 0
    assert (torch.kron(a, g) - dense).norm() > 1e-3 * dense.norm()  # an approximation here
    shared = pairs[0][1]  # all G proportional: the sum is one Kronecker product
    exact = [(pairs[0][0], shared), (pairs[1][0], 2.5 * shared)]
    a, g = nearest_kronecker(exact)
    torch.testing.assert_close(
        torch.kron(a, g), torch.kron(exact[0][0], shared) + torch.kron(exact[1][0], 2.5 * shared)
    )


@pytest.mark.parametrize("gamma", [1.0, 0.7, 0.0])
def test_online_kronecker_penalty_is_the_nearest_kronecker_product_of_the_decayed_sum(gamma):
    """After two tasks, online EWC's penalty around θ*₂: on the diagonal λ(γF₁ + F₂), per
    block the dense γ·λ(A₁⊗G₁) + λ(A₂⊗G₂) projected on Kronecker products by an SVD; its
    value and written gradient equal that dense form's; a checkpoint restores it."""
    from ewcexp.strategy.ewc import OnlineEWC

    generator = torch.Generator().manual_seed(5)
    [(first, first_anchor), (second, anchor)], params = kfac_tasks(generator, 2)
    strategy = OnlineEWC(strength=3.0, gamma=gamma)
    strategy.consolidate(first_anchor, first)
    strategy.consolidate(anchor, second)
    leaves = [p.clone().requires_grad_() for p in params]
    total = 0
    for p, a, f1, f2 in zip(leaves, anchor, first.diagonal, second.diagonal, strict=True):
        if f2 is not None:
            total = total + (3.0 * (gamma * f1 + f2) * (p - a) ** 2).sum()
    for b1, b2 in zip(first.blocks, second.blocks, strict=True):
        m, n = len(b1.A), len(b1.G)
        dense = gamma * torch.kron(b1.A, 3.0 * b1.G) + torch.kron(b2.A, 3.0 * b2.G)
        merged = nearest_by_svd(dense, m, n) if gamma else dense
        difference = (leaves[b1.weight] - anchor[b1.weight]).reshape(n, -1)
        if b1.bias is not None:
            difference = torch.cat([difference, (leaves[b1.bias] - anchor[b1.bias])[:, None]], 1)
        v = difference.T.flatten()
        total = total + v @ merged @ v
    assert strategy.penalty_value(params) == pytest.approx(float(total.detach()) / 2, rel=1e-9)
    want = torch.autograd.grad(total / 2, leaves)
    written = [p.clone() for p in params]
    strategy.write_penalty_gradient(written)
    for got, expected in zip([p.grad for p in written], want, strict=True):
        torch.testing.assert_close(got, expected)
    restored = OnlineEWC(strength=3.0, gamma=gamma)
    restored.load_state_dict(strategy.state_dict())
    assert restored.penalty_value(params) == strategy.penalty_value(params)


def test_exact_merging_refuses_kronecker_blocks_in_one_line_before_anything_loads():
    from ewcexp.config.checks import ConfigError, check_config
    from tests.conftest import compose_config

    for strategy in ("ewc_sum", "online_ewc", "l2", "mas"):
        cfg = compose_config(f"strategy={strategy}", "fisher.structure=kfac")
        if strategy in ("online_ewc", "l2", "mas"):  # approximate merge; no Fisher at all
            check_config(cfg)
            continue
        with pytest.raises(
            ConfigError, match=r"^fisher.structure=kfac is not allowed with strategy=ewc_sum: "
        ):
            check_config(cfg)
    check_config(compose_config("strategy=ewc", "fisher.structure=kfac"))
    with pytest.raises(
        ConfigError, match=r"^fisher.structure=kfac is not allowed with fisher.estimator=batched"
    ):
        check_config(compose_config("strategy=ewc", "fisher.structure=kfac", "fisher=batched"))


def test_fisher_settings_a_run_does_not_use_are_warned_about_not_refused(
    tmp_path, data_root, caplog
):
    """A sweep shares them across strategies (`-m strategy=finetune,si,ewc
    fisher.structure=kfac`), so they are no error; but the run's log says they change nothing."""
    import logging

    from ewcexp.config.checks import check_config, settings_without_effect
    from ewcexp.training.runner import prepare
    from tests.conftest import TINY, compose_config

    assert settings_without_effect(compose_config("strategy=si", "fisher.structure=kfac")) == [
        "fisher.structure=kfac has no effect with strategy=si: it does not consolidate with "
        "the fisher section's Fisher"
    ]
    assert settings_without_effect(compose_config("fisher.damping=0.5")) == [
        "fisher.damping=0.5 has no effect with fisher.structure=diagonal: it damps the "
        "Kronecker factors only"
    ]
    for used in (["strategy=online_ewc"], ["strategy=ewc", "fisher=sample"]):
        cfg = compose_config(*used, "fisher.structure=kfac", "fisher.damping=0.5")
        check_config(cfg)
        assert settings_without_effect(cfg) == []
    cfg = compose_config(*TINY, f"data.root={data_root}", "strategy=mas", "fisher.structure=kfac")
    check_config(cfg)
    with caplog.at_level(logging.WARNING):
        prepare(cfg, {}, tmp_path)
    assert "fisher.structure=kfac has no effect with strategy=mas" in caplog.text


@pytest.mark.slow
def test_kfac_ewc_runs_on_the_mlp_and_the_cnn_and_resumes_to_the_same_numbers(tmp_path, data_root):
    """The issue's commands, shortened (online EWC with W&B read back); then the MLP run
    killed mid-task and resumed."""
    import json
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, TINY, read_wandb_run, run_cli
    from tests.test_resume import KILLER

    common = [*TINY, "strategy=ewc", "fisher.structure=kfac", "fisher.num_samples=100", "lambda=10"]
    cnn = [o for o in common if not o.startswith("model.")]
    online = [o.replace("strategy=ewc", "strategy=online_ewc") for o in common]
    online = [o for o in online if o != "logger=none"] + ["logger=wandb"]
    for name, args in (
        ("mlp", common),
        ("online", online),
        (
            "cnn",
            [
                *cnn,
                "model=cnn",
                "model.channels=[4,8]",
                "model.hidden_size=16",
                "task_sequence=split_fashion_mnist",
            ],
        ),
    ):
        (tmp_path / name).mkdir()
        done = run_cli(*args, cwd=tmp_path / name, data_root=data_root)
        assert done.returncode == 0, done.stderr[-2000:]
        folder = tmp_path / name / "run"
        results = json.loads((folder / "results.json").read_text())
        assert results["fisher_estimator"] == "exact" and len(results["fisher"]) == 3
        assert min(results["acc_matrix"][t][t] for t in range(3)) > 0.5
        layers = ["layers.0", "layers.2"] if name != "cnn" else ["features.0", "features.3"]
        for t in range(3):  # the spectra: their statistics and a figure per task
            spectra = results["fisher"][t]["spectra"]
            assert set(layers) <= set(spectra)
            assert spectra[layers[0]]["A"]["max"] >= spectra[layers[0]]["A"]["min"]
            assert (folder / f"fisher_spectra_task{t + 1}.png").stat().st_size > 10_000
    records = read_wandb_run(tmp_path / "online" / "run")
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    logged = {
        row["task"]: row for row in rows if any(k.startswith("fisher_spectrum/") for k in row)
    }
    assert sorted(logged) == [1, 2, 3]
    online_results = json.loads((tmp_path / "online" / "run" / "results.json").read_text())
    for t in (1, 3):
        assert logged[t]["fisher_spectrum/layers.0/G._type"] == "histogram"
        assert logged[t]["fisher_spectrum_stats/layers.0/A/trace"] == pytest.approx(
            online_results["fisher"][t - 1]["spectra"]["layers.0"]["A"]["trace"]
        )
    run_dir = tmp_path / "cut" / "run"
    cut = subprocess.run(
        [sys.executable, "-c", KILLER, "ewcexp.training.loop.active_cross_entropy", str(30 + 12), "SIGTERM",
         str(REPO / "run.py"), *common, f"data.root={data_root}", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cut.returncode == 128 + signal.SIGTERM, cut.stderr[-2000:]
    resumed = run_cli(*common, cwd=tmp_path / "cut", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def numbers(folder):
        results = json.loads((folder / "run" / "results.json").read_text())
        return [results[k] for k in ("acc_matrix", "avg_acc", "fisher")]

    assert numbers(tmp_path / "cut") == numbers(tmp_path / "mlp")
