"""Time to estimate the Fisher, per estimator, against one plain forward+backward pass.

    uv run python benchmarks/fisher.py [--samples 60000] [--repeats 3]

For each model: the floor (one batched forward+backward pass of the mean loss over
the same samples, the cost of an epoch without optimizer steps), every estimator,
and the one-backward-pass-per-sample loop that per-sample Fishers are often computed
with (timed on --loop-samples and scaled to --samples); `exact` is compared with its own
naive loop, one backward pass per sample and class.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import machine, median_seconds, mnist_like, table

from ewcexp.importance.fisher import ESTIMATORS, estimate_fisher
from ewcexp.importance.per_sample import per_sample_sum
from ewcexp.model.networks import CNN, MLP

MODELS = {
    "MLP 784-400-400-10": lambda: MLP((28, 28), 10, [400, 400]),
    "MLP 784-1000-1000-10": lambda: MLP((28, 28), 10, [1000, 1000]),
    "CNN conv32-conv64-fc128": lambda: CNN((28, 28), 10, [32, 64], 128),
}
BATCH = 256
CLASSES = 10


def forward_backward_pass(model, images, labels):
    """The floor: batched mean-loss gradients over all samples, as one training epoch computes."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for start in range(0, len(images), BATCH):
        loss = F.cross_entropy(model(images[start : start + BATCH]), labels[start : start + BATCH])
        torch.autograd.grad(loss, params)


def per_sample_loop(model, images, labels):
    """The common slow way: one backward pass per sample (empirical Fisher)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for n in range(len(images)):
        loss = F.cross_entropy(model(images[n : n + 1]), labels[n : n + 1])
        grads = torch.autograd.grad(loss, params)
        torch._foreach_addcmul_(total, grads, grads)
    return total


def per_sample_class_loop(model, images, classes):
    """`exact`'s own naive form: one backward pass per sample and class, weighted by p_c."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for n in range(len(images)):
        log_probs = F.log_softmax(model(images[n : n + 1]), dim=1)[0]
        probs = log_probs.detach().exp()
        for c in range(classes):
            grads = torch.autograd.grad(log_probs[c], params, retain_graph=c < classes - 1)
            torch._foreach_addcmul_(total, grads, grads, value=float(probs[c]))
    return total


def exact_with_every_class(model, images):
    """`exact` with the C signals √p_c·(onehot(c) − p) of the sum as written, beside the
    C − 1 signals `estimate_fisher` uses (the same Fisher): what the smaller basis saves."""

    def signals_for(logits, rows):
        probs = logits.softmax(-1)
        onehots = torch.eye(CLASSES)[:, None, :]
        return probs.T.sqrt()[:, :, None] * (onehots - probs)

    return per_sample_sum(
        model, images, signals_for, active=slice(0, CLASSES), signals_per_sample=CLASSES,
        power=2, chunk_size=BATCH,
    )  # fmt: skip


def measure(model, images, labels, repeats: int, loop_samples: int) -> list[list[str]]:
    """Rows of the table for one model: floor, each estimator, the per-sample loop."""
    samples = len(images)
    floor = median_seconds(lambda: forward_backward_pass(model, images, labels), repeats)
    loop_images, loop_labels = images[:loop_samples], labels[:loop_samples]
    loop = median_seconds(lambda: per_sample_loop(model, loop_images, loop_labels), 1)
    loop *= samples / loop_samples
    class_samples = max(1, loop_samples // CLASSES)  # as many backward passes as `loop`
    class_loop = median_seconds(
        lambda: per_sample_class_loop(model, images[:class_samples], CLASSES), 1
    )
    class_loop *= samples / class_samples
    rows = [["one batched fwd+bwd (floor)", f"{floor:.2f}", "1.00", f"{loop / floor:.1f}"]]
    for estimator in ESTIMATORS:
        seconds = median_seconds(
            lambda e=estimator: estimate_fisher(
                model,
                images,
                labels,
                estimator=e,
                active=slice(0, CLASSES),
                chunk_size=BATCH,
                batch_size=BATCH,
                generator=torch.Generator().manual_seed(0),
            ),
            repeats,
        )
        naive = class_loop if estimator == "exact" else loop
        rows.append(
            [estimator, f"{seconds:.2f}", f"{seconds / floor:.2f}", f"{naive / seconds:.1f}"]
        )
        if estimator == "exact":
            check = slice(0, 2 * BATCH)  # the same Fisher, before it is timed
            nine = estimate_fisher(
                model, images[check], labels[check], estimator="exact", active=slice(0, CLASSES)
            )
            ten = exact_with_every_class(model, images[check])
            for a, b in zip(nine, ten, strict=True):
                torch.testing.assert_close(a, b / len(images[check]), rtol=1e-4, atol=1e-9)
            seconds = median_seconds(lambda: exact_with_every_class(model, images), repeats)
            rows.append(
                [
                    f"exact with {CLASSES} signals, one per class (before C − 1)",
                    f"{seconds:.2f}",
                    f"{seconds / floor:.2f}",
                    f"{class_loop / seconds:.1f}",
                ]
            )
    rows.append(
        [
            f"one backward per sample (timed on {loop_samples}, scaled)",
            f"{loop:.1f}",
            f"{loop / floor:.1f}",
            "1.0",
        ]
    )
    rows.append(
        [
            f"exact's naive loop: one backward per sample and class (timed on {class_samples}, scaled)",
            f"{class_loop:.1f}",
            f"{class_loop / floor:.1f}",
            "1.0",
        ]
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument(
        "--cnn-samples",
        type=int,
        default=10_000,
        help="for the CNN (slow on a CPU); the ratios are per sample, not per count",
    )
    parser.add_argument("--loop-samples", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.manual_seed(0)
    images, labels = mnist_like(max(args.samples, args.cnn_samples))
    print(f"Median of {args.repeats}; {machine()}\n")
    for name in args.models:
        samples = args.cnn_samples if name.startswith("CNN") else args.samples
        rows = measure(
            MODELS[name](), images[:samples], labels[:samples], args.repeats, args.loop_samples
        )
        print(f"### {name}, {samples} samples\n")
        print(table(["method", "seconds", "× floor", "× faster than the naive loop"], rows))
        print(flush=True)


if __name__ == "__main__":
    main()
