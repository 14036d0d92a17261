"""Structured Attention Graphs (Shitole et al. 2021), light: minimal sufficient regions by beam search.

A probe is cut into a coarse ``grid x grid`` set of patches. A *region* (set of patches) is shown to the model with
every other patch replaced by the image's mean colour (a blurred copy would leak the hidden patches' colours
into the kept ones); the region is *sufficient* when the model's
probability for the target class is at least ``keep`` times its probability on the full image. Beam search adds one
patch at a time and keeps the ``beam`` most confident regions at each size, so it finds several *minimal sufficient
explanations* (MSEs: sufficient, and no region one patch smaller along the search is). The graph: each MSE is a
root, and its children are the MSE with one patch removed, ordered by the confidence they lose, which shows which
patches the decision rests on. Expensive, so offline: a handful of probes at the end of fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai._validation import check, check_options, integer, number, path
from lightning_xai.views._common import OutputTransform, capture, display, tile_grid

__all__ = ["GRAPH_OPTIONS", "AttentionGraph", "attention_graphs", "check_graph_options", "render_attention_graphs"]

#: The options of the end-of-fit structured attention graphs (``view_options['attention_graphs']``).
GRAPH_OPTIONS = {
    "num_probes": integer(4, 1, 64, "probes searched, the first of the probe set"),
    "grid": integer(4, 2, 16, "patches per side; the search grows with grid**2"),
    "beam": integer(5, 1, 64, "regions kept per size; at most beam * grid**2 forwards per size"),
    "keep": number(0.9, 0.0, 1.0, "a region is sufficient at this share of the full image's probability",
                   open_low=True),
    "max_roots": integer(3, 1, 64, "minimal sufficient regions per probe"),
    "max_patches": integer(None, 1, 256, "largest region searched, at most grid**2", none="grid**2 // 2"),
}


def check_graph_options(options: Any, root: str = "", owner: str = "attention_graphs") -> dict[str, Any]:
    """``options`` checked against :data:`GRAPH_OPTIONS` (defaults filled in), ``max_patches <= grid**2`` too."""
    out = check_options(options, GRAPH_OPTIONS, root, owner=owner)
    if out["max_patches"] is not None:
        check(out["max_patches"] <= out["grid"] ** 2, path(root, "max_patches"), out["max_patches"],
              f"an int in [1, grid**2 = {out['grid'] ** 2}]", owner=owner)
    return out


@dataclass
class AttentionGraph:
    """The structured attention graph of one probe.

    Attributes:
        target: the explained class.
        full_probability: the target's probability on the full image.
        grid: patches per side.
        roots: the minimal sufficient explanations, each a sorted tuple of patch indices (row-major).
        root_probability: the target probability with only each root shown.
        children: per root, ``(removed patch, probability without it)``, largest drop first.
        evaluations: how many masked images the search evaluated.
    """

    target: int
    full_probability: float
    grid: int
    roots: list[tuple[int, ...]] = field(default_factory=list)
    root_probability: list[float] = field(default_factory=list)
    children: list[list[tuple[int, float]]] = field(default_factory=list)
    evaluations: int = 0

    def summary(self, class_name: str | None = None) -> str:
        name = class_name if class_name is not None else str(self.target)
        if not self.roots:
            return (f"{name} (p={self.full_probability:.2f}): no region of the {self.grid}x{self.grid} grid within "
                    "the search is sufficient")
        parts = [f"{len(r)}/{self.grid ** 2} patches {list(r)} p={p:.2f}"
                 for r, p in zip(self.roots, self.root_probability)]
        return f"{name} (p={self.full_probability:.2f}): {len(self.roots)} minimal sufficient regions: " + \
            "; ".join(parts)


def _patch_masks(grid: int, size: tuple[int, int], device: torch.device) -> Tensor:
    """``(grid*grid, 1, H, W)`` binary masks, one per patch (row-major); edges split as evenly as possible."""
    h, w = size
    ys = [round(i * h / grid) for i in range(grid + 1)]
    xs = [round(j * w / grid) for j in range(grid + 1)]
    masks = torch.zeros(grid * grid, 1, h, w, device=device)
    for i in range(grid):
        for j in range(grid):
            masks[i * grid + j, :, ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = 1.0
    return masks


def _probabilities(model: nn.Module, image: Tensor, target: int, patches: Tensor, regions: list[tuple[int, ...]],
                   output_transform: OutputTransform | None) -> list[float]:
    """Target probability with only each region's patches shown, the rest of ``image`` at its mean colour."""
    if not regions:
        return []
    background = image.mean(dim=(2, 3), keepdim=True).expand_as(image)
    masks = torch.stack([patches[list(r)].sum(0).clamp(max=1.0) if r else torch.zeros_like(patches[0])
                         for r in regions])
    x = background + masks * (image - background)
    logits = capture(model, x, output_transform=output_transform)[0]
    return logits.softmax(dim=1)[:, target].cpu().tolist()


def attention_graphs(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    grid: int = 4,
    beam: int = 5,
    keep: float = 0.9,
    max_roots: int = 3,
    max_patches: int | None = None,
    output_transform: OutputTransform | None = None,
) -> list[AttentionGraph]:
    """Find minimal sufficient regions and their one-patch-removed children for each probe.

    Cost: per probe at most ``beam * grid**2`` masked forwards per region size, up to ``max_patches`` sizes
    (default ``grid**2 // 2``), plus ``|root|`` forwards per root; every forward runs through
    :func:`~lightning_xai.views._common.capture` (eval mode, no side effects).

    Args:
        model: the classifier.
        images: ``(N, C, H, W)`` probes (as the model sees them).
        targets: ``(N,)`` classes to explain (usually the predictions).
        grid: patches per side.
        beam: regions kept per size.
        keep: a region is sufficient when ``p(region) >= keep * p(full image)``.
        max_roots: at most this many minimal sufficient regions per probe.
        max_patches: largest region searched.
        output_transform: maps the model output to logits.

    Returns:
        One :class:`AttentionGraph` per probe.
    """
    check_graph_options({"grid": grid, "beam": beam, "keep": keep, "max_roots": max_roots, "max_patches": max_patches})
    npatch = grid * grid
    max_patches = npatch // 2 if max_patches is None else max_patches
    device = images.device
    size = (int(images.shape[-2]), int(images.shape[-1]))
    patches = _patch_masks(grid, size, device)

    out = []
    for n in range(images.shape[0]):
        image = images[n : n + 1].detach()
        target = int(targets[n])

        def probability(regions: list[tuple[int, ...]], _image: Tensor = image, _target: int = target) -> list[float]:
            return _probabilities(model, _image, _target, patches, regions, output_transform)

        p_full = probability([tuple(range(npatch))])[0]
        graph = AttentionGraph(target, p_full, grid)
        need = keep * p_full
        frontier: list[tuple[int, ...]] = [()]
        seen: set[tuple[int, ...]] = set()
        evaluations = 1
        for _size in range(1, max_patches + 1):
            candidates = sorted({tuple(sorted((*r, p))) for r in frontier for p in range(npatch) if p not in r} - seen)
            seen.update(candidates)
            # a superset of a root is sufficient but not minimal
            candidates = [c for c in candidates if not any(set(root) <= set(c) for root in graph.roots)]
            if not candidates:
                break
            probs = probability(candidates)
            evaluations += len(candidates)
            ranked = sorted(zip(probs, candidates), key=lambda pc: (-pc[0], pc[1]))
            for p, region in ranked:
                if p >= need and len(graph.roots) < max_roots:
                    graph.roots.append(region)
                    graph.root_probability.append(p)
            if len(graph.roots) >= max_roots:
                break
            frontier = [region for p, region in ranked if p < need][:beam]
        for root in graph.roots:
            smaller = [tuple(q for q in root if q != p) for p in root]
            probs = probability(smaller)
            evaluations += len(smaller)
            graph.children.append(sorted(zip(root, probs), key=lambda rp: rp[1]))
        graph.evaluations = evaluations
        out.append(graph)
    return out


def render_attention_graphs(
    images: Tensor,
    graphs: Sequence[AttentionGraph],
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_children: int = 2,
) -> tuple[Tensor, str]:
    """Draw the graphs: one row per probe, the image, then per root the region shown and its ``num_children``
    most damaging one-patch removals (hidden patches are darkened in the picture).

    Returns:
        ``(uint8 (3, H, W) picture, Markdown text)`` describing every probe's graph.
    """
    shown = display(images, mean, std)
    size = (int(shown.shape[-2]), int(shown.shape[-1]))
    max_roots = max((len(g.roots) for g in graphs), default=0)
    ncol = 1 + max_roots * (1 + num_children)
    tiles, captions, lines = [], [], []

    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(c)

    for img, graph in zip(shown, graphs):
        patches = _patch_masks(graph.grid, size, torch.device("cpu"))

        def region_tile(region: Sequence[int], _img: Tensor = img, _patches: Tensor = patches) -> Tensor:
            mask = _patches[list(region)].sum(0).clamp(max=1.0) if region else torch.zeros_like(_patches[0])
            return _img * (0.25 + 0.75 * mask)

        tiles.append(img)
        captions.append([name(graph.target)[:12], f"p={graph.full_probability:.2f}"])
        for r in range(max_roots):
            if r < len(graph.roots):
                root = graph.roots[r]
                tiles.append(region_tile(root))
                captions.append([f"MSE {len(root)}p", f"p={graph.root_probability[r]:.2f}"])
                for c in range(num_children):
                    if c < len(graph.children[r]):
                        removed, p = graph.children[r][c]
                        tiles.append(region_tile([q for q in root if q != removed]))
                        captions.append([f" -patch {removed}", f"p={p:.2f}"])
                    else:
                        tiles.append(torch.ones_like(img))
                        captions.append(["", ""])
            else:
                tiles.extend(torch.ones_like(img) for _ in range(1 + num_children))
                captions.extend(["", ""] for _ in range(1 + num_children))
        lines.append("- " + graph.summary(name(graph.target)))
    picture = tile_grid(torch.stack(tiles), captions, nrow=ncol, upscale_to=64)
    text = ("Structured attention graphs: each row is a probe; each minimal sufficient region (MSE: the patches "
            "kept, the rest of the image at its mean colour; patches numbered row by row from the top left) keeps "
            "the class probability; the tiles after it remove one patch each, the one that costs most first."
            "\n\n" + "\n".join(lines))
    return picture, text
