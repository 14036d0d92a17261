"""Procedurally generated shapes with ground-truth masks and an optional planted shortcut.

Every image shows one shape (its class) at a random position, scale, rotation and colour on a textured, noisy
background. The ground-truth mask marks the shape's pixels: the evidence a well-behaved classifier should use.
A small class-coloured checkerboard square in a corner (the *marker*) can be planted as a shortcut, switched on
mid-training with :meth:`ShapesDataset.set_shortcut`, or placed with the colour and corner of a wrong class
(``marker="counter"``) to probe whether a model reads the shape or the marker.

Nothing here touches the global random number generators: sample ``index`` is drawn from its own
``torch.Generator`` seeded with a hash of ``(seed, index)``, so an item is the same whatever order, process or
DataLoader worker asks for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["MARKER_COLORS", "SHAPES_MEAN", "SHAPES_STD", "SHAPE_NAMES", "ShapesDataset"]

#: Every shape the generator can draw, in class-index order. ``num_classes=k`` uses the first ``k``.
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

#: Per-channel mean and standard deviation used when ``normalize=True`` (measured on clean images; fixed constants
#: so that any consumer can de-normalise with ``image * std + mean``).
SHAPES_MEAN: tuple[float, float, float] = (0.438, 0.439, 0.437)
SHAPES_STD: tuple[float, float, float] = (0.176, 0.176, 0.176)

#: RGB colour of the marker of each class (values in [0, 1]): a 1-px checkerboard of this colour and black. The
#: corner is ``class % 4``
#: (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
MARKER_COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),  # red
    (0.0, 1.0, 0.0),  # green
    (0.0, 0.2, 1.0),  # blue
    (1.0, 1.0, 0.0),  # yellow
    (1.0, 0.0, 1.0),  # magenta
    (0.0, 1.0, 1.0),  # cyan
)

_MARKER_MODES = ("class", "none", "counter")
_PLACEMENTS = ("corner", "edge", "random")
_CORRUPTIONS = (None, "noise", "blur", "brightness")
_MASK64 = (1 << 64) - 1
_NUM_CENTRE_TRIES = 16
_TEXTURE_CELLS = 6


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _item_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed that depends on ``(seed, index, stream)`` only (stable across runs and platforms)."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) ^ stream) >> 1


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _shape_inside(name: str, u: Tensor, v: Tensor) -> Tensor:
    """Boolean membership of points ``(u, v)`` (shape-centred, rotated, radius-normalised) in shape ``name``.

    Every shape lies inside the unit disk, so a shape of radius ``r`` never leaves the disk of radius ``r``.
    """
    if name == "circle":
        return u * u + v * v <= 0.88**2
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.68
    if name == "triangle":
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):  # equilateral triangle inscribed in the circle of radius 0.96 (inradius 0.48)
            a = math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.48
        return inside
    if name == "cross":
        au, av = u.abs(), v.abs()
        return ((au <= 0.27) & (av <= 0.92)) | ((av <= 0.27) & (au <= 0.92))
    if name == "ring":
        rho2 = u * u + v * v
        return (rho2 <= 0.92**2) & (rho2 >= 0.52**2)
    if name == "star":
        t = torch.remainder(torch.atan2(v, u) * (5 / (2 * math.pi)), 1.0)
        outline = 0.40 + 0.56 * (1.0 - 2.0 * (t - 0.5).abs())
        return u * u + v * v <= outline * outline  # squared: torch.sqrt is multi-threaded (slow when busy)
    raise ValueError(f"unknown shape {name!r}")  # pragma: no cover - SHAPE_NAMES is closed


class ShapesDataset(Dataset):
    """Coloured shapes on textured, noisy backgrounds, with ground-truth masks and an optional shortcut marker.

    Sample ``index`` is generated from a ``torch.Generator`` seeded with a hash of ``(seed, index)``: it is identical
    on every call, run, process and DataLoader worker, and the global RNGs (torch, ``random``, numpy) are never
    used, neither when constructing the dataset nor when generating items. Labels are balanced: each consecutive
    block of ``num_classes`` indices holds every class once, in a per-block shuffled order.

    Shape, position (the shape never overlaps any of the four marker corners), scale (radius 22-34 % of the image
    side), rotation and colour (saturated, random hue) vary per sample; the background is a smooth random colour
    texture plus a faint grating plus pixel noise.

    **Shortcut marker.** With ``marker="class"`` a ``marker_size`` square (a 1-px checkerboard of the class colour
    and black) is drawn in a corner with probability ``shortcut_strength``; colour (:data:`MARKER_COLORS`) and corner
    (``class % 4``) encode the label. It is a much easier cue than the shape: a small CNN trained from scratch on
    marked images reads it within one epoch.
    ``marker="counter"`` draws, with the same probability, the marker of the wrong class ``(label + 1) %
    num_classes`` (for evaluation: does the model follow the shape or the marker?). ``marker="none"`` never draws
    one. The marker never covers the shape and is *not* part of the ground-truth mask; :meth:`marker_mask` gives its
    pixels. Whether sample ``index`` carries the marker depends only on ``(seed, index)`` and the strength, and all
    other pixels are identical with and without it.

    **Switching mid-training.** :meth:`set_shortcut` changes the items returned afterwards. DataLoader workers hold
    copies of the dataset: use ``num_workers=0``, or ``persistent_workers=False`` (workers are re-created, with a
    fresh copy, at every epoch) for the change to reach the loader.

    Args:
        num_samples: number of samples (``len(dataset)``).
        image_size: side of the square images, in pixels (>= 16; below ~24 px many shapes are shrunk to stay clear
            of the marker corners; 32 is the tested default).
        num_classes: number of shape classes, 2 to 6 (first ``num_classes`` of :data:`SHAPE_NAMES`).
        seed: dataset seed; two datasets with different seeds share no images (use different seeds for train/val).
        shortcut_strength: probability in [0, 1] that a sample carries the marker (``marker`` "class"/"counter").
        marker: ``"class"``, ``"counter"`` or ``"none"``.
        marker_size: side of the marker square in pixels; default ``max(3, round(image_size / 8))``.
        placement: where the marker goes: ``"corner"`` (the class's corner, ``class % 4``), ``"edge"`` (one fixed
            square at the middle of the top edge for every class, so only its colour encodes the class; shapes keep
            clear of it) or ``"random"`` (a different free place on every image, never over the shape: a cue
            without a fixed position).
        normalize: if True, images are standardised with :data:`SHAPES_MEAN` / :data:`SHAPES_STD`; else in [0, 1].

    Returns (``dataset[i]``):
        ``(image, label, mask)``: ``image`` float32 ``(3, H, W)``, ``label`` an ``int``, ``mask`` float32
        ``(1, H, W)`` with 1.0 on the shape's pixels and 0.0 elsewhere.

    Example::

        >>> ds = ShapesDataset(8, image_size=32, seed=1)
        >>> image, label, mask = ds[0]
        >>> tuple(image.shape), tuple(mask.shape), ds.classes[label] in ds.classes
        ((3, 32, 32), (1, 32, 32), True)
        >>> ds.set_shortcut(1.0)
        >>> bool(ds.marker_mask(0).any())
        True
    """

    #: Class names; an instance's ``classes`` holds the first ``num_classes`` of them.
    classes: list[str] = list(SHAPE_NAMES)

    def __init__(
        self,
        num_samples: int,
        *,
        image_size: int = 32,
        num_classes: int = 4,
        seed: int = 0,
        shortcut_strength: float = 0.0,
        marker: str = "class",
        marker_size: int | None = None,
        placement: str = "corner",
        normalize: bool = True,
    ) -> None:
        errors = []
        if placement not in _PLACEMENTS:
            errors.append(f"`placement` must be one of {_PLACEMENTS}, got {placement!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            errors.append(f"`num_samples` must be an int >= 0, got {num_samples!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            errors.append(f"`image_size` must be an int >= 16, got {image_size!r}")
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, int)
            or not 2 <= num_classes <= len(SHAPE_NAMES)
        ):
            errors.append(f"`num_classes` must be an int in [2, {len(SHAPE_NAMES)}], got {num_classes!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            errors.append(f"`seed` must be an int, got {seed!r}")
        if not isinstance(normalize, bool):
            errors.append(f"`normalize` must be a bool, got {normalize!r}")
        if marker_size is not None and (
            isinstance(marker_size, bool)
            or not isinstance(marker_size, int)
            or not (isinstance(image_size, int) and 2 <= marker_size <= max(2, image_size // 4))
        ):
            errors.append(f"`marker_size` must be None or an int in [2, image_size // 4], got {marker_size!r}")
        try:
            self._check_shortcut(shortcut_strength, marker)
        except (TypeError, ValueError) as err:
            errors.append(str(err))
        if errors:
            raise ValueError("ShapesDataset: " + "; ".join(errors))

        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.normalize = normalize
        self.marker_size = marker_size if marker_size is not None else max(3, round(image_size / 8))
        self.shortcut_strength = float(shortcut_strength)
        self.marker = marker
        self.placement = placement
        self.corruption: str | None = None
        self.corruption_severity = 0.0
        self.classes = list(SHAPE_NAMES[:num_classes])
        self._mean = torch.tensor(SHAPES_MEAN).view(3, 1, 1)
        self._std = torch.tensor(SHAPES_STD).view(3, 1, 1)
        # Pixel-centre coordinates: low resolution for the background, 2x supersampled for anti-aliased shapes.
        s = image_size
        lo = torch.arange(s, dtype=torch.float32) + 0.5
        self._coords = lo
        hi = (torch.arange(2 * s, dtype=torch.float32) + 0.5) / 2
        self._yhi, self._xhi = torch.meshgrid(hi, hi, indexing="ij")
        # Separable bicubic upsampling (texture cells -> pixels) as an (s, cells) weight matrix, see _bicubic.
        eye = torch.eye(_TEXTURE_CELLS).view(_TEXTURE_CELLS, 1, _TEXTURE_CELLS, 1)
        cols = F.interpolate(eye, size=(s, 1), mode="bicubic", align_corners=False)  # (cells, 1, s, 1)
        self._upsample = cols[:, 0, :, 0].T.contiguous()  # (s, cells)
        self._checker = ((torch.arange(s)[:, None] + torch.arange(s)[None, :]) % 2 == 0).float()[None]  # (1, s, s)
        off = max(1, s // 32)
        m = self.marker_size
        # (x0, y0) of each corner's marker square: top-left, top-right, bottom-left, bottom-right.
        self._corners = [(off, off), (s - off - m, off), (off, s - off - m), (s - off - m, s - off - m)]
        self._edge = ((s - m) // 2, off)  # placement="edge": top edge, centred
        # squares the shape keeps clear of: the corners, and the edge square when it is used
        self._avoid = self._corners + ([self._edge] if placement == "edge" else [])

    # ------------------------------------------------------------------ shortcut control
    @staticmethod
    def _check_shortcut(strength: Any, marker: Any) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"`shortcut_strength` must be a float in [0, 1], got {strength!r}")
        if marker not in _MARKER_MODES:
            raise ValueError(f"`marker` must be one of {_MARKER_MODES}, got {marker!r}")

    def set_shortcut(self, strength: float, marker: str | None = None) -> None:
        """Change the marker for items generated from now on.

        Args:
            strength: probability in [0, 1] that a sample carries the marker.
            marker: ``"class"``, ``"counter"`` or ``"none"``; ``None`` keeps the current mode.

        DataLoader workers hold copies of the dataset: the change reaches a loader only with ``num_workers=0`` or
        non-persistent workers (re-created at the next epoch).
        """
        marker = self.marker if marker is None else marker
        self._check_shortcut(strength, marker)
        self.shortcut_strength = float(strength)
        self.marker = marker

    def set_corruption(self, kind: str | None, severity: float = 1.0) -> None:
        """Shift the image domain of items generated from now on (applied before normalisation).

        Args:
            kind: ``"noise"`` (extra Gaussian pixel noise, std ``0.15 * severity``, drawn per item from its own
                generator), ``"blur"`` (``severity`` passes of a 3x3 box blur), ``"brightness"`` (``+0.25 *
                severity``), or ``None`` for clean images.
            severity: strength in ``[0, 4]``.
        """
        if kind not in _CORRUPTIONS:
            raise ValueError(f"`kind` must be one of {_CORRUPTIONS}, got {kind!r}")
        if isinstance(severity, bool) or not isinstance(severity, (int, float)) or not 0.0 <= float(severity) <= 4.0:
            raise ValueError(f"`severity` must be a number in [0, 4], got {severity!r}")
        self.corruption = kind
        self.corruption_severity = float(severity)

    # ------------------------------------------------------------------ Dataset protocol
    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        item = self.sample(index)
        return item["image"], item["label"], item["mask"]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, image_size={self.image_size}, "
            f"num_classes={self.num_classes}, seed={self.seed}, shortcut_strength={self.shortcut_strength}, "
            f"marker={self.marker!r}, marker_size={self.marker_size}, placement={self.placement!r}, "
            f"normalize={self.normalize})"
        )

    # ------------------------------------------------------------------ public helpers
    def label(self, index: int) -> int:
        """Class of sample ``index`` (cheap: does not render the image)."""
        index = self._check_index(index)
        block, pos = divmod(index, self.num_classes)
        g = torch.Generator().manual_seed(_item_seed(self.seed, block, stream=1))
        return int(torch.randperm(self.num_classes, generator=g)[pos])

    def marker_class(self, index: int) -> int:
        """Class encoded by the marker drawn on sample ``index`` under the current settings; -1 if it has none."""
        index = self._check_index(index)
        params = self._params(index)
        return self._marker_class(self.label(index), params["marker_u"])

    def marker_mask(self, index: int) -> Tensor:
        """Pixels of the marker on sample ``index`` under the current settings.

        Returns:
            float32 ``(1, H, W)``: 1.0 on the marker square, all zeros if this sample carries no marker.
        """
        index = self._check_index(index)
        params = self._params(index)
        cls = self._marker_class(self.label(index), params["marker_u"])
        return self._marker_pixels(cls, params)

    def marker_region(self, class_index: int) -> Tensor:
        """Where the marker of class ``class_index`` would be drawn (whether or not any sample carries it).

        Returns:
            float32 ``(1, H, W)`` mask of the marker square for that class.

        Raises:
            ValueError: with ``placement="random"``, where the place differs per image (use :meth:`marker_mask`).
        """
        if isinstance(class_index, bool) or not isinstance(class_index, int) or not 0 <= class_index < self.num_classes:
            raise ValueError(f"`class_index` must be an int in [0, {self.num_classes}), got {class_index!r}")
        if self.placement == "random":
            raise ValueError("marker_region() needs a fixed place; with placement='random' use marker_mask(index)")
        return self._marker_pixels(class_index)

    def sample(self, index: int) -> dict[str, Any]:
        """Sample ``index`` with everything known about it.

        Returns:
            dict with ``image`` (float32 ``(3, H, W)``), ``label`` (int), ``mask`` (float32 ``(1, H, W)``, the
            shape), ``marker_mask`` (float32 ``(1, H, W)``, the marker, zeros if none), ``marker_class`` (int, -1 if
            no marker), ``index`` (int).
        """
        index = self._check_index(index)
        label = self.label(index)
        params = self._params(index)
        image, mask = self._render(label, params)
        marker_cls = self._marker_class(label, params["marker_u"])
        marker_mask = self._marker_pixels(marker_cls, params)
        if marker_cls >= 0:
            image = torch.where(marker_mask.bool(), self._marker_image(marker_cls), image)
        if self.corruption is not None:
            image = self._corrupt(image, index)
        if self.normalize:
            image = (image - self._mean) / self._std
        return {
            "image": image,
            "label": label,
            "mask": mask,
            "marker_mask": marker_mask,
            "marker_class": marker_cls,
            "index": index,
        }

    def concept_masks(self, index: int) -> dict[str, Tensor]:
        """Concept masks of sample ``index`` for network dissection (:mod:`lightning_xai.views`).

        Returns:
            ``{class name: (1, H, W)}`` for every class (the shape's mask on a sample of that class, zeros on the
            others) and ``"marker"``: :meth:`marker_mask` under the current settings. Per-class shape concepts,
            because a concept on every image (any shape, ~15-35 % of the pixels) cannot pass the dissection rule.
        """
        item = self.sample(index)
        zeros = torch.zeros_like(item["mask"])
        concepts = {name: item["mask"] if c == item["label"] else zeros for c, name in enumerate(self.classes)}
        concepts["marker"] = item["marker_mask"]
        return concepts

    def denormalize(self, images: Tensor) -> Tensor:
        """Undo ``normalize=True``: ``images * SHAPES_STD + SHAPES_MEAN`` (``(3, H, W)`` or ``(N, 3, H, W)``)."""
        return images * self._std.to(images) + self._mean.to(images)

    # ------------------------------------------------------------------ internals
    def _check_index(self, index: Any) -> int:
        if isinstance(index, Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.num_samples}")
        return index

    def _marker_class(self, label: int, marker_u: float) -> int:
        if self.marker == "none" or not marker_u < self.shortcut_strength:
            return -1
        if self.marker == "counter":
            return (label + 1) % self.num_classes
        return label

    def _marker_pixels(self, marker_cls: int, params: dict[str, Any] | None = None) -> Tensor:
        s, m = self.image_size, self.marker_size
        out = torch.zeros(1, s, s)
        if marker_cls >= 0:
            x0, y0 = self._marker_xy(marker_cls, params)
            out[:, y0 : y0 + m, x0 : x0 + m] = 1.0
        return out

    def _marker_xy(self, marker_cls: int, params: dict[str, Any] | None) -> tuple[int, int]:
        """Top-left pixel of the marker square."""
        if self.placement == "edge":
            return self._edge
        if self.placement == "random" and params is not None:
            s, m = self.image_size, self.marker_size
            cx, cy, radius = self._centre(s * (0.22 + 0.12 * params["u"][0]), params["centres"])
            xy = (params["marker_xy"] * (s - m + 1)).floor().clamp(max=s - m)  # (T, 2) candidate corners
            near = torch.maximum(torch.minimum(torch.tensor([cx, cy], dtype=xy.dtype), xy + m), xy)
            free = ((near - torch.tensor([cx, cy], dtype=xy.dtype)) ** 2).sum(-1) > (radius + 1.5) ** 2
            idx = torch.nonzero(free)
            if idx.numel():
                x0, y0 = xy[int(idx[0, 0])].tolist()
                return int(x0), int(y0)
        return self._corners[marker_cls % 4]  # "corner", or no free random place: the corner is always free

    def _corrupt(self, image: Tensor, index: int) -> Tensor:
        sev = self.corruption_severity
        if self.corruption == "noise":
            g = torch.Generator().manual_seed(_item_seed(self.seed, index, stream=2))
            image = image + 0.15 * sev * torch.randn(image.shape, generator=g)
        elif self.corruption == "blur":
            for _ in range(round(sev)):
                image = F.avg_pool2d(F.pad(image[None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]
        elif self.corruption == "brightness":
            image = image + 0.25 * sev
        return image.clamp(0.0, 1.0)

    def _marker_image(self, marker_cls: int) -> Tensor:
        """Full-size 1-px checkerboard of the class colour and black; only the marker square is used from it.

        A checkerboard occurs nowhere else in the images (smooth textures, flat shapes), so even a CNN with global
        average pooling picks it up within an epoch; a flat colour square would be confused with shapes of that hue.
        """
        color = torch.tensor(MARKER_COLORS[marker_cls]).view(3, 1, 1)
        return color * self._checker

    def _bicubic(self, cells: Tensor) -> Tensor:
        """``F.interpolate(cells, (s, s), mode="bicubic")`` for ``(3, k, k)`` cells, with elementwise ops only.

        Per item, F.interpolate, avg_pool2d and matmul (BLAS) are dominated by thread start-up costs, which grow to
        milliseconds on a busy machine; small broadcasts stay single-threaded and cost microseconds.
        """
        w = self._upsample  # (s, k)
        rows = (cells[:, :, None, :] * w[None, None, :, :]).sum(-1)  # (3, k, s): interpolated along x
        out = w[None, :, 0, None] * rows[:, 0, None, :]
        for a in range(1, w.shape[1]):
            out = out + w[None, :, a, None] * rows[:, a, None, :]
        return out  # (3, s, s)

    def _params(self, index: int) -> dict[str, Any]:
        """All random draws of sample ``index``, always the same number in the same order (marker or not)."""
        g = torch.Generator().manual_seed(_item_seed(self.seed, index))
        u = torch.rand(16, generator=g, dtype=torch.float64).tolist()
        centres = torch.rand(_NUM_CENTRE_TRIES, 2, generator=g, dtype=torch.float64)
        texture = torch.rand(1, 3, _TEXTURE_CELLS, _TEXTURE_CELLS, generator=g)
        noise = torch.randn(3, self.image_size, self.image_size, generator=g)
        marker_xy = torch.rand(_NUM_CENTRE_TRIES, 2, generator=g, dtype=torch.float64)  # drawn last: older draws kept
        return {"u": u, "centres": centres, "texture": texture, "noise": noise, "marker_u": u[13],
                "marker_xy": marker_xy}

    def _centre(self, radius: float, centres: Tensor) -> tuple[float, float, float]:
        """``(cx, cy, radius)``: the first candidate centre whose disk of ``radius`` (+1.5 px) stays inside the image
        and off all marker corners; if none fits, the image centre with the radius shrunk to fit."""
        s, m = self.image_size, self.marker_size
        lo, hi = radius + 1.0, s - radius - 1.0
        c = lo + centres * (hi - lo)  # (T, 2) as (x, y)
        corners = torch.tensor(self._avoid, dtype=c.dtype)  # (K, 2) top-left of each marker square to avoid
        d = c[:, None, :] - torch.maximum(torch.minimum(c[:, None, :], corners + m), corners)  # (T, 4, 2)
        ok = ((d * d).sum(-1) > (radius + 1.5) ** 2).all(dim=1)
        idx = torch.nonzero(ok)
        if idx.numel() == 0:
            clearance = math.sqrt(2.0) * (s / 2 - self._corners[0][0] - m)  # image centre -> nearest marker corner
            if self.placement == "edge":
                clearance = min(clearance, s / 2 - self._edge[1] - m)
            return s / 2, s / 2, min(radius, clearance - 1.5)
        cx, cy = c[int(idx[0, 0])].tolist()
        return cx, cy, radius

    def _render(self, label: int, p: dict[str, Any]) -> tuple[Tensor, Tensor]:
        s = self.image_size
        u = p["u"]
        # Background: muted base colour + smooth random colour texture + faint grating + pixel noise.
        grey = 0.3 + 0.25 * u[5]
        base = torch.tensor([grey + 0.24 * (u[6] - 0.5), grey + 0.24 * (u[7] - 0.5), grey + 0.24 * (u[8] - 0.5)])
        texture = self._bicubic(p["texture"][0] - 0.5)
        texture = 0.22 * texture.mean(0, keepdim=True) + 0.08 * texture  # mostly luminance, a little colour
        freq = (2.0 + 5.0 * u[9]) * 2 * math.pi / s
        theta = math.pi * u[10]
        # sin(ax + by + c) = sin(ax + c) cos(by) + cos(ax + c) sin(by): 1-D transcendentals only (a 2-D sin is
        # multi-threaded by torch, which costs milliseconds per item on a busy machine).
        ax = freq * math.cos(theta) * self._coords + 2 * math.pi * u[11]
        by = freq * math.sin(theta) * self._coords
        grating = torch.sin(ax)[None, :] * torch.cos(by)[:, None] + torch.cos(ax)[None, :] * torch.sin(by)[:, None]
        background = base.view(3, 1, 1) + texture + 0.06 * grating

        # Shape: anti-aliased coverage from a 2x supersampled membership test.
        radius = s * (0.22 + 0.12 * u[0])
        cx, cy, radius = self._centre(radius, p["centres"])
        rot = 2 * math.pi * u[1]
        dx, dy = (self._xhi - cx) / radius, (self._yhi - cy) / radius
        cu = dx * math.cos(rot) + dy * math.sin(rot)
        cv = -dx * math.sin(rot) + dy * math.cos(rot)
        inside = _shape_inside(SHAPE_NAMES[label], cu, cv).float()
        coverage = inside.view(1, s, 2, s, 2).mean(dim=(2, 4))  # (1, H, W); avoids avg_pool2d's thread overhead
        color = torch.tensor(_hsv_to_rgb(u[2], 0.65 + 0.35 * u[3], 0.8 + 0.2 * u[4])).view(3, 1, 1)

        image = background * (1 - coverage) + color * coverage
        image = image + (0.03 + 0.04 * u[12]) * p["noise"]
        mask = (coverage >= 0.5).float()
        return image.clamp(0.0, 1.0), mask
