"""Penultimate-layer features of the pool for TensorBoard's projector, and a class-separation score per epoch."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_xai import keys
from lightning_xai._validation import integer
from lightning_xai.render import to_uint8
from lightning_xai.views._common import Embedding, View, ViewContext, ViewOutput, checked, display

__all__ = ["ProjectorView", "nearest_centroid_accuracy", "silhouette"]


def nearest_centroid_accuracy(features: Tensor, labels: Tensor) -> float:
    """Leave-one-out nearest-centroid accuracy: each point is classified by the closest class mean (Euclidean),
    its own class's mean computed without it. Classes with a single point are left out. ``nan`` if fewer than two
    classes have two points or more.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` integer classes.
    """
    x = features.detach().double().cpu()
    y = labels.detach().cpu().long()
    classes, counts = torch.unique(y, return_counts=True)
    keep_classes = classes[counts >= 2]
    if keep_classes.numel() < 2:
        return float("nan")
    keep = torch.isin(y, keep_classes)
    x, y = x[keep], y[keep]
    onehot = (y[:, None] == keep_classes[None, :]).double()  # (N, K)
    sums = onehot.T @ x  # (K, D)
    n_k = onehot.sum(0)  # (K,)
    # own class's centroid without the point itself
    own = (sums[None, :, :] - onehot[:, :, None] * x[:, None, :]) / (n_k[None, :, None] - onehot[:, :, None])
    dist = ((x[:, None, :] - own) ** 2).sum(-1)
    pred = keep_classes[dist.argmin(dim=1)]
    return float((pred == y).double().mean())


def silhouette(features: Tensor, labels: Tensor) -> float:
    """Mean silhouette coefficient (Euclidean) of the labelled points, in ``[-1, 1]``; ``nan`` with fewer than two
    classes. A point alone in its class scores 0 (scikit-learn's convention); so do points whose distances are all 0.
    """
    x = features.detach().double().cpu()
    y = labels.detach().cpu().long()
    classes = torch.unique(y)
    if classes.numel() < 2:
        return float("nan")
    d = torch.cdist(x, x)
    onehot = (y[:, None] == classes[None, :]).double()  # (N, K)
    sums = d @ onehot  # (N, K): sum of distances to each class
    n_k = onehot.sum(0)
    own = onehot.bool()
    a = (sums * onehot).sum(1) / (n_k[None, :] * onehot).sum(1).sub(1).clamp_min(1)
    mean_other = sums / n_k[None, :]
    b = mean_other.masked_fill(own, float("inf")).min(dim=1).values
    denom = torch.maximum(a, b)
    s = torch.where(denom > 0, (b - a) / denom.clamp_min(1e-300), torch.zeros_like(a))
    singleton = (n_k[None, :] * onehot).sum(1) <= 1
    s = torch.where(singleton, torch.zeros_like(s), s)
    return float(s.mean())


class ProjectorView(View):
    """Features of the pool (the input of the model's last ``nn.Linear``) to TensorBoard's projector.

    Every ``every_n_epochs`` rounds an :class:`Embedding` with metadata columns ``id``, ``label``, ``prediction``,
    ``correct`` and a thumbnail per point; TensorBoard's projector runs PCA / t-SNE / UMAP on it. Every round, two
    cheap scalars of class separation on the pool: ``xai/projector/centroid_accuracy`` (leave-one-out
    nearest-centroid accuracy of the features) and ``xai/projector/silhouette``.

    Cost: one forward over the pool (shared with the other views), an ``N x N`` distance matrix, and (when due) the features, metadata and
    thumbnails written to disk (TensorBoard writes ``N x D`` floats as text plus a sprite image).

    Logged: ``xai/projector/centroid_accuracy``, ``xai/projector/silhouette`` (scalars); the embedding under tag
    ``xai/projector`` (files in the log directory, with ``projector_config.pbtxt``).
    """

    name = "projector"
    options = {
        "every_n_epochs": integer(1, 1, 10**6, "write the embedding every n-th round"),
        "thumbnail_size": integer(32, 8, 256, "side of the projector's thumbnails, in pixels"),
    }

    def __init__(self, every_n_epochs: int = 1, thumbnail_size: int = 32) -> None:
        opts = checked(type(self).__name__, self.options, every_n_epochs=every_n_epochs, thumbnail_size=thumbnail_size)
        self.every_n_epochs = opts["every_n_epochs"]
        self.thumbnail_size = opts["thumbnail_size"]

    def __call__(self, ctx: ViewContext) -> ViewOutput:
        logits, _, feats = ctx.outputs("pool")
        feats = feats.cpu()
        labels = ctx.pool_labels.cpu()
        preds = logits.argmax(dim=1).cpu()
        out = ViewOutput()
        known = labels >= 0  # unknown labels (-1) are not a class
        for key, value in (("centroid_accuracy", nearest_centroid_accuracy(feats[known], labels[known])),
                           ("silhouette", silhouette(feats[known], labels[known]))):
            if value == value:  # no NaN in a log: undefined with a single class
                out.scalars[keys.of("projector", key)] = value
        if ctx.epoch % self.every_n_epochs == 0:
            thumbs = display(ctx.pool_images, ctx.mean, ctx.std)
            if max(thumbs.shape[-2:]) > self.thumbnail_size:
                thumbs = torch.nn.functional.interpolate(thumbs, size=(self.thumbnail_size, self.thumbnail_size),
                                                         mode="bilinear", antialias=True, align_corners=False)
            metadata = [
                [str(int(i)), ctx.class_name(int(y)), ctx.class_name(int(p)), str(int(y) == int(p))]
                for i, y, p in zip(ctx.pool_ids.cpu(), labels, preds)
            ]
            out.embeddings.append(Embedding(keys.PREFIX + "projector", feats.float(), metadata,
                                            ["id", "label", "prediction", "correct"], to_uint8(thumbs)))
        return out
