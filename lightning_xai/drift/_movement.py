"""Where did the evidence move: centroid shift, the region that gained mass, convergence of probes, per class."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["REGIONS", "Movement", "describe_region", "movement"]

#: Names of the cells of a 3x3 grid over the image, row-major.
REGIONS: tuple[str, ...] = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom",
                            "bottom-right")


def describe_region(index: int) -> str:
    return REGIONS[index]


@dataclass
class Movement:
    """Where one method's evidence went, relative to a reference frame.

    Attributes:
        method: the attribution method.
        reference: which frame the maps are compared with (e.g. ``"epoch 7"``).
        probes: indices of the probes described (the flagged ones, or all valid probes when none is flagged).
        centroid_shift: ``(N, 2)`` shift ``(dx, dy)`` of each map's centre of mass, in fractions of the image side
            (right and down positive); NaN for probes with a degenerate map on either side.
        mean_shift: mean length of the shift over ``probes``.
        gained: ``(N,)`` index into :data:`REGIONS` of the 3x3 cell that gained the most mass (-1: invalid).
        region: the cell most of ``probes`` gained mass in; ``region_count`` of them did.
        converged: True when that is at least half of ``probes`` (and at least 3): many probes moved to the *same*
            place, the signature of a positional shortcut.
        per_class: class -> ``(region, count, total)`` over ``probes`` of that class (labels given).
        mass_before, mass_now: mean share of the mass inside the ground-truth masks (masks given), else None.
    """

    method: str
    reference: str
    probes: list[int]
    centroid_shift: Tensor
    mean_shift: float
    gained: Tensor
    region: str
    region_count: int
    converged: bool
    per_class: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    mass_before: float | None = None
    mass_now: float | None = None

    def describe(self, class_names: list[str] | None = None) -> str:
        """One clause: ``grad_cam: 9/12 probes gained mass at the top-left (converged), centroid moved 0.21 ...``."""
        n = len(self.probes)
        if n == 0:
            return f"{self.method}: no comparable maps"
        if self.class_coded:
            places = ", ".join(f"{_name(c, class_names)} -> {region}" for c, (region, _, _) in
                               sorted(self.per_class.items()))
            text = (f"{self.method}: each class moved to a different place (class-coded positional cue): {places}")
        elif self.converged:
            text = f"{self.method}: converged to the {self.region} ({self.region_count}/{n} samples gained mass there)"
        else:
            text = f"{self.method}: {self.region_count}/{n} samples gained mass at the {self.region}"
        text += f", centre of mass moved {self.mean_shift:.2f} of the image side"
        if self.mass_before is not None and self.mass_now is not None:
            text += f", mass on the object {self.mass_before:.2f} -> {self.mass_now:.2f}"
        return text

    @property
    def class_coded(self) -> bool:
        """Most classes gained mass in one place each, and the places differ between classes (at least two)."""
        settled = {c: region for c, (region, count, total) in self.per_class.items()
                   if total >= 2 and count * 2 > total and region != "n/a"}
        return len(settled) >= 2 and len(set(settled.values())) >= max(2, (len(settled) + 1) // 2) and \
            len(settled) * 2 > len(self.per_class)

    def class_text(self, class_names: list[str] | None = None) -> str:
        parts = []
        for cls, (region, count, total) in sorted(self.per_class.items()):
            name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
            parts.append(f"{name}: {region} {count}/{total}")
        return "; ".join(parts)


def _name(cls: int, class_names: list[str] | None) -> str:
    return class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)


def _distribution(rows: Tensor) -> Tensor:
    """Non-negative rows normalised to sum 1 (rows without mass stay zero)."""
    rows = rows.clamp_min(0)
    total = rows.sum(dim=1, keepdim=True)
    return torch.where(total > 0, rows / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(rows))


def movement(method: str, before: Tensor, after: Tensor, valid: Tensor, flagged: Tensor, *, reference: str,
             labels: Tensor | None = None, masks: Tensor | None = None) -> Movement:
    """Describe how ``after`` differs from ``before`` (pooled maps ``(N, S, S)``, CPU float)."""
    n, s, _ = after.shape
    p0 = _distribution(before.reshape(n, -1).double()).reshape(n, s, s)
    p1 = _distribution(after.reshape(n, -1).double()).reshape(n, s, s)
    coords = (torch.arange(s, dtype=torch.float64) + 0.5) / s
    centroid = torch.stack([(p.sum(1) * coords).sum(1) for p in (p0, p1)], 0), torch.stack(
        [(p.sum(2) * coords).sum(1) for p in (p0, p1)], 0)  # x from column sums, y from row sums
    cx, cy = centroid
    shift = torch.stack([cx[1] - cx[0], cy[1] - cy[0]], dim=1)  # (N, 2)
    shift = torch.where(valid[:, None], shift, torch.full_like(shift, float("nan")))
    # mass gained per 3x3 cell (adaptive pooling tolerates S not divisible by 3)
    gain = F.adaptive_avg_pool2d((p1 - p0)[:, None], 3).reshape(n, 9)
    gained = torch.where(valid, gain.argmax(dim=1), torch.full((n,), -1, dtype=torch.long))
    use = valid & flagged if bool((valid & flagged).any()) else valid
    probes = use.nonzero().flatten().tolist()
    counts = Counter(int(gained[i]) for i in probes)
    region_idx, region_count = counts.most_common(1)[0] if counts else (-1, 0)
    per_class: dict[int, tuple[str, int, int]] = {}
    if labels is not None:
        for cls in sorted({int(labels[i]) for i in probes}):
            members = [i for i in probes if int(labels[i]) == cls]
            c_idx, c_count = Counter(int(gained[i]) for i in members).most_common(1)[0]
            per_class[cls] = (REGIONS[c_idx], c_count, len(members))
    mass_before = mass_now = None
    if masks is not None and probes:
        inside = masks.reshape(n, -1).double()
        idx = torch.tensor(probes)
        mass_before = float((p0.reshape(n, -1) * inside).sum(1)[idx].mean())
        mass_now = float((p1.reshape(n, -1) * inside).sum(1)[idx].mean())
    mean_shift = float(shift[probes].norm(dim=1).mean()) if probes else 0.0
    return Movement(method=method, reference=reference, probes=probes, centroid_shift=shift.float(),
                    mean_shift=mean_shift, gained=gained, region=REGIONS[region_idx] if region_idx >= 0 else "n/a",
                    region_count=region_count, converged=region_count >= max(3, (len(probes) + 1) // 2),
                    per_class=per_class, mass_before=mass_before, mass_now=mass_now)
