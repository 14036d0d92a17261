"""Explanation-quality metrics (pure torch, no Lightning import).

- :mod:`~lightning_xai.metrics.stability`: similarity of two sets of maps (Spearman of pooled maps, top-k overlap).
- :mod:`~lightning_xai.metrics.completeness`: Integrated Gradients completeness error.
- :mod:`~lightning_xai.metrics.localisation`: pointing game and relevance mass against masks or boxes.
- :mod:`~lightning_xai.metrics.faithfulness`: deletion / insertion curves and their AUC.
- :mod:`~lightning_xai.metrics.agreement`: rank agreement between methods.
- :mod:`~lightning_xai.metrics.sanity`: model-randomisation sanity check.
- :mod:`~lightning_xai.metrics.degenerate`: the one rule for degenerate maps (non-finite, all zero, constant).
"""

from lightning_xai.metrics.agreement import pairwise_agreement, rank_agreement
from lightning_xai.metrics.completeness import relative_error, summarize
from lightning_xai.metrics.degenerate import degenerate_kinds, degenerate_rows
from lightning_xai.metrics.faithfulness import deletion_auc, deletion_curve, insertion_auc, insertion_curve
from lightning_xai.metrics.localisation import boxes_to_masks, pointing_game, relevance_mass
from lightning_xai.metrics.sanity import parameterized_layers, randomized_copy, sanity_similarity
from lightning_xai.metrics.stability import downsample, spearman_similarity, topk_overlap

__all__ = [
    "boxes_to_masks",
    "degenerate_kinds",
    "degenerate_rows",
    "deletion_auc",
    "deletion_curve",
    "downsample",
    "insertion_auc",
    "insertion_curve",
    "pairwise_agreement",
    "parameterized_layers",
    "pointing_game",
    "randomized_copy",
    "rank_agreement",
    "relative_error",
    "relevance_mass",
    "sanity_similarity",
    "spearman_similarity",
    "summarize",
    "topk_overlap",
]
