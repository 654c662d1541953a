"""The pictures a run writes: training curves and attention heatmaps (matplotlib, Agg),
each saved atomically."""

import os

from kerasformer.training.files import atomic_save


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path, dpi):
    plt = _pyplot()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=dpi), "the figure")
    finally:
        plt.close(figure)
    return path


def plot_curves(history, path, learning_rates=()):
    """Train/validation loss and accuracy per epoch, side by side, and the learning rate
    per step (`[step, rate]` points, each holding until the next)."""
    plt = _pyplot()
    figure, (loss_axis, accuracy_axis, rate_axis) = plt.subplots(1, 3, figsize=(15, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "masked_accuracy")):
        axis.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    if learning_rates:
        steps, rates = zip(*learning_rates)
        rate_axis.step(steps, rates, where="post")
    rate_axis.set_xlabel("step")
    rate_axis.set_title("learning rate")
    figure.tight_layout()
    return _save(figure, path, dpi=100)


def plot_attention(source, target, weights, path, title):
    """One heatmap per head: `weights` `(heads, len(target), len(source))`, the pieces on the axes."""
    plt = _pyplot()
    heads = weights.shape[0]
    columns = min(4, heads)
    rows = -(-heads // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3 + 0.35 * len(source) * columns, 1 + 0.35 * len(target) * rows), squeeze=False
    )
    for head, axis in enumerate(axes.flat):
        if head >= heads:
            axis.axis("off")
            continue
        axis.imshow(weights[head], cmap="viridis", vmin=0, vmax=1)
        axis.set_title(f"head {head}")
        axis.set_xticks(range(len(source)), source, rotation=90, fontsize=7)
        axis.set_yticks(range(len(target)), target, fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path, dpi=120)
