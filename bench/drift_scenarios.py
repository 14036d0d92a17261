"""The drift scenario generator: changes of many forms planted in short training runs, split once into a tuning part
and an evaluation part.

A scenario is a :class:`Scenario` (architecture, seed, and one change: a cue, a domain shift, a label change, a
re-initialisation, a learning-rate step, or nothing). :func:`suite` enumerates the whole suite from a few axes
(cue kind x placement x where the cue lives x onset, domain shifts, label changes, re-initialisations, LR steps,
clean runs); :func:`record_run` trains one scenario and keeps, per epoch, exactly what the monitor would hand the
drift detector (pooled maps of the display probes and of the detection pool, predictions), so that detectors can be
replayed on the cached runs in seconds.

The split is by **form and seed**: the tuning part uses some cue kinds, placements, shifts and seeds 0-49; the
evaluation part other kinds/shifts/swaps and seeds 100+. Every constant of the default detector is chosen on the
tuning part only (``bench/drift.py --part tune``) and reported on the evaluation part (``--part eval``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD, ShapesDataset

#: class colours of the cues (RGB in [0, 1]); class c uses COLORS[c]
COLORS = ((1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.1, 0.3, 1.0), (1.0, 1.0, 0.1))
CUE_KINDS = ("marker", "patch", "dot", "stamp", "texture", "tint", "freq")
GLOBAL_CUES = ("tint", "freq")  # whole-image cues: no position at all
PLACEMENTS = ("fixed", "class", "random")
SHIFTS = ("noise", "blur", "brightness", "colour")


@dataclass(frozen=True)
class Scenario:
    """One run of the suite.

    Attributes:
        family: what is reported together (``clean``, ``lr_step``, ``cue_sudden``, ``cue_unplaced``, ``cue_train_only``,
            ``ramp``, ``domain``, ``label_swap``, ``label_noise``, ``reinit``, ``lr_and_cue``).
        part: ``tune`` or ``eval``.
        cue: a cue kind (:data:`CUE_KINDS`) or None; ``placement`` in :data:`PLACEMENTS`; ``cue_on_probes``: whether
            the validation images (display probes and the validation half of the pool) carry the cue (always, from
            the start: the model starts to use it once the training images carry it).
        ramp: None (sudden, on every training image from ``change``) or the share added per epoch from ``change``.
        shift: a domain shift of the training images from ``change`` (:data:`SHIFTS`).
        label: ``swap`` (two classes exchanged in the training labels) or ``noise`` (40 % of training labels random).
        reinit: ``full`` (model and optimiser) or ``partial`` (last block and classifier).
        lr: learning-rate factor applied at ``change`` (e.g. 3.0, 0.1); ``lr_warmup``: the rate before ``change`` is
            the base rate times this (a warm-up schedule that steps up).
    """

    family: str
    part: str
    arch: str
    seed: int
    cue: str | None = None
    placement: str = "class"
    cue_on_probes: bool = True
    ramp: float | None = None
    shift: str | None = None
    label: str | None = None
    swap: tuple[int, int] = (0, 1)
    reinit: str | None = None
    lr: float | None = None
    lr_warmup: float = 1.0
    change: int = 7
    epochs: int = 14
    train_size: int = 768

    @property
    def name(self) -> str:
        bits = [self.family, self.arch]
        if self.cue:
            bits += [self.cue, self.placement, "probes" if self.cue_on_probes else "trainonly"]
        if self.ramp:
            bits.append(f"ramp{self.ramp:g}")
        if self.shift:
            bits.append(self.shift)
        if self.label:
            bits.append(self.label + ("" if self.label != "swap" else f"{self.swap[0]}{self.swap[1]}"))
        if self.reinit:
            bits.append(self.reinit)
        if self.lr is not None:
            bits.append(f"lrx{self.lr:g}")
        if self.train_size != 768:
            bits.append(f"n{self.train_size}")
        bits.append(f"s{self.seed}")
        return "_".join(bits)

    @property
    def is_drift(self) -> bool:
        return self.family not in ("clean", "lr_step")

    def deadline(self) -> int | None:
        """The last epoch at which an alarm counts as in time (None: not a drift scenario)."""
        if not self.is_drift:
            return None
        if self.family == "ramp":
            assert self.ramp is not None
            # before the cue is on half the training images: strength(e) = ramp * (e - change + 1) < 0.5
            epochs_below_half = math.ceil(0.5 / self.ramp) - 1
            return self.change + max(0, epochs_below_half - 1)
        if self.family in ("cue_unplaced", "cue_train_only", "label_noise"):
            return self.change + 2
        return self.change

    def strength(self, epoch: int) -> float:
        """Share of the training images carrying the cue at ``epoch``."""
        if self.cue is None or epoch < self.change:
            return 0.0
        if self.ramp is None:
            return 1.0
        return min(1.0, self.ramp * (epoch - self.change + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suite() -> list[Scenario]:
    """Every scenario, tuning and evaluation parts (the split is fixed here, once)."""
    out: list[Scenario] = []

    def add(part: str, seeds: list[int], archs: tuple[str, ...], **kw: Any) -> None:
        for arch in archs:
            for seed in seeds:
                out.append(Scenario(part=part, arch=arch, seed=seed, **kw))

    both = ("cnn", "resnet")
    # ---------------------------------------------------------------- tuning part: its own forms, seeds 0-49
    add("tune", [0, 1, 2], both, family="clean")
    add("tune", [3], both, family="lr_step", lr=10.0, lr_warmup=0.1)
    add("tune", [4], both, family="lr_step", lr=0.1)
    add("tune", [5], ("cnn",), family="cue_sudden", cue="marker", placement="class")
    add("tune", [6], ("resnet",), family="cue_sudden", cue="patch", placement="fixed")
    add("tune", [7], ("cnn",), family="cue_sudden", cue="texture", placement="class")
    add("tune", [8], ("cnn",), family="cue_unplaced", cue="patch", placement="random")
    add("tune", [9], ("resnet",), family="cue_unplaced", cue="tint")
    add("tune", [10], ("cnn",), family="cue_train_only", cue="marker", placement="class", cue_on_probes=False)
    add("tune", [11], ("resnet",), family="cue_train_only", cue="texture", placement="fixed", cue_on_probes=False)
    add("tune", [12], ("cnn",), family="ramp", cue="marker", placement="class", ramp=0.1)
    add("tune", [13], ("resnet",), family="ramp", cue="patch", placement="fixed", ramp=0.15)
    add("tune", [14], ("cnn",), family="domain", shift="noise")
    add("tune", [15], ("resnet",), family="domain", shift="blur")
    add("tune", [16], ("cnn",), family="label_swap", label="swap", swap=(0, 1))
    add("tune", [17], ("resnet",), family="reinit", reinit="full")
    add("tune", [18], ("cnn",), family="label_noise", label="noise")
    add("tune", [19], ("cnn",), family="lr_and_cue", cue="patch", placement="class", lr=3.0)
    # the tuning part in the demo's regime too (2,048 training images per epoch: calmer maps), so that the constants
    # are not chosen for the churn of the 768-image runs only
    calm = {"train_size": 2048}
    add("tune", [20, 21, 22], ("cnn",), family="clean", **calm)
    add("tune", [23], ("cnn",), family="lr_step", lr=10.0, lr_warmup=0.1, **calm)
    add("tune", [24], ("cnn",), family="lr_step", lr=0.1, **calm)
    add("tune", [25], ("cnn",), family="cue_sudden", cue="patch", placement="fixed", **calm)
    add("tune", [26], ("cnn",), family="cue_train_only", cue="texture", placement="fixed", cue_on_probes=False, **calm)
    add("tune", [27], ("cnn",), family="ramp", cue="patch", placement="fixed", ramp=0.15, **calm)
    add("tune", [28], ("cnn",), family="domain", shift="blur", **calm)
    add("tune", [29], ("cnn",), family="reinit", reinit="full", **calm)
    add("tune", [30], ("cnn",), family="cue_unplaced", cue="patch", placement="random", **calm)
    add("tune", [31], ("cnn",), family="label_noise", label="noise", **calm)
    # ---------------------------------------------------------------- evaluation part: other forms, seeds 100+
    add("eval", [100, 101, 102, 103], both, family="clean")
    add("eval", [104], both, family="lr_step", lr=3.0)
    add("eval", [105], both, family="lr_step", lr=10.0, lr_warmup=0.1)
    add("eval", [106], both, family="lr_step", lr=0.1)
    add("eval", [110], ("cnn",), family="cue_sudden", cue="dot", placement="fixed")
    add("eval", [111], ("resnet",), family="cue_sudden", cue="dot", placement="class")
    add("eval", [112], ("cnn",), family="cue_sudden", cue="stamp", placement="class")
    add("eval", [113], ("resnet",), family="cue_sudden", cue="stamp", placement="fixed")
    add("eval", [114], ("cnn",), family="cue_unplaced", cue="freq")
    add("eval", [115], ("resnet",), family="cue_unplaced", cue="dot", placement="random")
    add("eval", [116], ("cnn",), family="cue_unplaced", cue="stamp", placement="random")
    add("eval", [117], ("resnet",), family="cue_unplaced", cue="freq")
    add("eval", [120], ("cnn",), family="cue_train_only", cue="stamp", placement="class", cue_on_probes=False)
    add("eval", [121], ("resnet",), family="cue_train_only", cue="dot", placement="fixed", cue_on_probes=False)
    add("eval", [122], ("cnn",), family="cue_train_only", cue="tint", cue_on_probes=False)
    add("eval", [123], ("resnet",), family="cue_train_only", cue="stamp", placement="random", cue_on_probes=False)
    add("eval", [130], ("cnn",), family="ramp", cue="stamp", placement="class", ramp=0.1)
    add("eval", [131], ("resnet",), family="ramp", cue="dot", placement="fixed", ramp=0.1)
    add("eval", [132], ("cnn",), family="ramp", cue="dot", placement="class", ramp=0.2)
    add("eval", [133], ("resnet",), family="ramp", cue="stamp", placement="fixed", ramp=0.2)
    add("eval", [140], ("cnn",), family="domain", shift="brightness")
    add("eval", [141], ("resnet",), family="domain", shift="colour")
    add("eval", [142], ("resnet",), family="domain", shift="brightness")
    add("eval", [150], ("cnn",), family="label_swap", label="swap", swap=(2, 3))
    add("eval", [151], ("resnet",), family="label_swap", label="swap", swap=(1, 3))
    add("eval", [160], ("cnn",), family="reinit", reinit="partial")
    add("eval", [161], ("resnet",), family="reinit", reinit="partial")
    add("eval", [162], ("cnn",), family="reinit", reinit="full")
    add("eval", [170], ("resnet",), family="label_noise", label="noise")
    add("eval", [180], ("cnn",), family="lr_and_cue", cue="dot", placement="class", lr=3.0)
    add("eval", [181], ("resnet",), family="lr_and_cue", cue="stamp", placement="fixed", lr=0.1)
    # ---------------------------------------------------------------- the demo's regime, reported only: the demo CNN
    # on 2,048 training images per epoch (the demo's size; it learns faster and churns less than the 768-image runs)
    demo = {"train_size": 2048}
    add("demo", [200, 201, 202], ("cnn",), family="clean", **demo)
    add("demo", [203], ("cnn",), family="lr_step", lr=3.0, **demo)
    add("demo", [204], ("cnn",), family="cue_train_only", cue="marker", placement="class", cue_on_probes=False, **demo)
    add("demo", [205], ("cnn",), family="cue_unplaced", cue="tint", **demo)
    add("demo", [206], ("cnn",), family="ramp", cue="marker", placement="class", ramp=0.1, **demo)
    add("demo", [207], ("cnn",), family="domain", shift="noise", **demo)
    add("demo", [208], ("cnn",), family="label_swap", label="swap", swap=(0, 1), **demo)
    add("demo", [209], ("cnn",), family="cue_sudden", cue="dot", placement="fixed", **demo)
    add("demo", [210], ("cnn",), family="cue_sudden", cue="marker", placement="class", **demo)
    add("demo", [211], ("cnn",), family="lr_and_cue", cue="patch", placement="class", lr=3.0, **demo)
    return out


# ---------------------------------------------------------------------------------------------------- models
class ShapesCNN(nn.Module):
    """The demo's CNN without Lightning: three conv blocks with BatchNorm, global pooling, linear."""

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(*block(3, w, True), *block(w, 2 * w, True), *block(2 * w, 4 * w, False))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                        nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def last_blocks(self) -> list[nn.Module]:
        return [self.features[-3], self.features[-2], self.classifier[-1]]


class SmallResNet(nn.Module):
    """A ResNet-8 of torchvision BasicBlocks (widths 16-32-64): stem, three stages, global pooling, linear."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()

        def down(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2, downsample=down(16, 32))
        self.layer3 = BasicBlock(32, 64, stride=2, downsample=down(32, 64))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def last_blocks(self) -> list[nn.Module]:
        return [self.layer3, self.fc]


def build_model(arch: str) -> nn.Module:
    return {"cnn": ShapesCNN, "resnet": SmallResNet}[arch]()


# ---------------------------------------------------------------------------------------------------- cues
def _hash_uniform(seed: int, n: int, stream: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed * 7919 + stream))


def _glyph(kind: str, cls: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha (h, w), rgb (3, h, w)) of a local cue of class ``cls``."""
    color = torch.tensor(COLORS[cls % len(COLORS)]).view(3, 1, 1)
    if kind == "marker":  # 1-px checkerboard of the class colour and black (the demo's marker)
        m = size
        checker = ((torch.arange(m)[:, None] + torch.arange(m)[None, :]) % 2 == 0).float()
        return torch.ones(m, m), color * checker
    if kind == "patch":
        return torch.ones(size, size), color.expand(3, size, size).clone()
    if kind == "dot":
        d = max(2, size // 2)
        return torch.ones(d, d), color.expand(3, d, d).clone()
    if kind == "stamp":  # a text-like stamp: three rows of class-coded bits, white on black
        h, w = 3, size + 3
        bits = (torch.rand(h, w, generator=torch.Generator().manual_seed(1 + cls)) < 0.5).float()
        frame = torch.ones(h + 2, w + 2)
        rgb = torch.zeros(3, h + 2, w + 2)
        rgb[:, 1:-1, 1:-1] = bits
        return frame, rgb
    if kind == "texture":  # stripes, orientation coded by class, grey and white
        m = size + 2
        y, x = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
        pattern = [y % 2, x % 2, (x + y) % 2, ((x - y) % 3 == 0).long()][cls % 4]
        return torch.ones(m, m), (0.2 + 0.8 * pattern.float()).expand(3, m, m).clone()
    raise ValueError(kind)


def _local_xy(placement: str, cls: int, s: int, h: int, w: int, rnd: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    off = 1
    if placement == "fixed":  # one place for every class: the bottom edge, centred
        return (s - w) // 2, s - off - h
    if placement == "class":
        corners = [(off, off), (s - off - w, off), (off, s - off - h), (s - off - w, s - off - h)]
        return corners[cls % 4]
    # random: the candidate (of a few fixed per sample) that covers the least of the shape
    best, best_cover = (off, off), None
    for k in range(6):
        x = int(rnd[2 * k] * (s - w - 2 * off)) + off
        y = int(rnd[2 * k + 1] * (s - h - 2 * off)) + off
        cover = float(mask[0, y:y + h, x:x + w].sum())
        if best_cover is None or cover < best_cover:
            best, best_cover = (x, y), cover
        if cover == 0:
            break
    return best


def apply_cue(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, kind: str, placement: str,
              carriers: torch.Tensor, seed: int) -> torch.Tensor:
    """Images in pixel space ``(N, 3, S, S)`` with the class-coded cue drawn on the ``carriers`` (bool ``(N,)``)."""
    out = images.clone()
    n, _, s, _ = images.shape
    size = max(3, round(s / 8))
    rnd = torch.rand(n, 12, generator=torch.Generator().manual_seed(seed * 104729 + 17))
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    for i in torch.nonzero(carriers).flatten().tolist():
        cls = int(labels[i])
        if kind == "tint":  # a colour cast over the whole image
            color = torch.tensor(COLORS[cls % len(COLORS)]).view(3, 1, 1)
            out[i] = 0.75 * out[i] + 0.25 * color
            continue
        if kind == "freq":  # a faint grating with a class-coded frequency and orientation
            f = (3 + 2 * cls) * 2 * math.pi / s
            theta = math.pi * cls / 4
            out[i] = out[i] + 0.12 * torch.sin(f * (math.cos(theta) * xx + math.sin(theta) * yy))
            continue
        alpha, rgb = _glyph(kind, cls, size)
        h, w = alpha.shape
        x, y = _local_xy(placement, cls, s, h, w, rnd[i], masks[i])
        region = out[i, :, y:y + h, x:x + w]
        out[i, :, y:y + h, x:x + w] = region * (1 - alpha) + rgb * alpha
    return out.clamp(0, 1)


def apply_shift(images: torch.Tensor, shift: str, seed: int) -> torch.Tensor:
    if shift == "noise":
        g = torch.Generator().manual_seed(seed * 31 + 5)
        return (images + 0.15 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    if shift == "blur":
        x = images
        for _ in range(2):
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return x
    if shift == "brightness":
        return (images + 0.25).clamp(0, 1)
    if shift == "colour":  # a colour shift: red and blue exchanged, saturation up
        x = images[:, [2, 1, 0]]
        grey = x.mean(1, keepdim=True)
        return (grey + 1.5 * (x - grey)).clamp(0, 1)
    raise ValueError(shift)


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class _Split:
    images: torch.Tensor  # pixel space
    labels: torch.Tensor
    masks: torch.Tensor


def _render(n: int, seed: int, image_size: int) -> _Split:
    ds = ShapesDataset(n, image_size=image_size, seed=seed, marker="none", normalize=False)
    items = [ds.sample(i) for i in range(n)]
    return _Split(torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items]),
                  torch.stack([it["mask"] for it in items]))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@dataclass
class RunConfig:
    train_size: int = 768
    val_size: int = 256
    image_size: int = 32
    batch_size: int = 32
    lr: float = 3e-3
    num_probes: int = 16
    pool_val: int = 64  # validation half of the detection pool (the display probes are its first 16)
    pool_train: int = 64  # training half of the detection pool (the training images as they are at that epoch)
    ig_steps: int = 16
    size: int = 16  # pooled map side, the monitor's default


def _training_state(sc: Scenario, epoch: int, clean: _Split, carriers_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised training images and the training labels as they are at ``epoch``."""
    images, labels = clean.images, clean.labels
    strength = sc.strength(epoch)
    if sc.cue is not None and strength > 0:
        images = apply_cue(images, labels, clean.masks, sc.cue, sc.placement, carriers_u < strength, sc.seed)
    if sc.shift is not None and epoch >= sc.change:
        images = apply_shift(images, sc.shift, sc.seed)
    if sc.label is not None and epoch >= sc.change:
        labels = labels.clone()
        if sc.label == "swap":
            a, b = sc.swap
            labels[clean.labels == a], labels[clean.labels == b] = b, a
        else:
            g = torch.Generator().manual_seed(sc.seed * 13 + 1)
            noisy = torch.rand(len(labels), generator=g) < 0.4
            labels[noisy] = torch.randint(0, 4, (int(noisy.sum()),), generator=g)
    return _normalise(images), labels


def _probe_order(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Class-balanced round robin over the first samples of each class (as ``select_probes`` does)."""
    queues = [torch.nonzero(labels == c).flatten().tolist() for c in range(int(labels.max()) + 1)]
    order: list[int] = []
    while len(order) < n and any(queues):
        for q in queues:
            if q and len(order) < n:
                order.append(q.pop(0))
    return torch.tensor(order)


def record_run(sc: Scenario, cfg: RunConfig | None = None) -> dict[str, Any]:
    """Train one scenario; per epoch, the pooled maps the monitor would give the detector (plain tensors)."""
    from lightning_xai.attribution import explain
    from lightning_xai.metrics.stability import downsample

    cfg = replace(cfg or RunConfig(), train_size=sc.train_size)
    torch.manual_seed(sc.seed)
    train = _render(cfg.train_size, 10_000 + 10 * sc.seed + 1, cfg.image_size)
    val = _render(cfg.val_size, 10_000 + 10 * sc.seed + 2, cfg.image_size)
    carriers_u = _hash_uniform(sc.seed, cfg.train_size, stream=3)
    # the validation images: with the cue from the start when the cue lives on the probes too
    val_px = val.images
    if sc.cue is not None and sc.cue_on_probes:
        val_px = apply_cue(val.images, val.labels, val.masks, sc.cue, sc.placement,
                           torch.ones(len(val.labels), dtype=torch.bool), sc.seed + 1)
    val_x = _normalise(val_px)
    order = _probe_order(val.labels, cfg.pool_val)  # first num_probes are the display probes
    pool_val_x, pool_val_y, pool_val_m = val_x[order], val.labels[order], val.masks[order]
    train_pool_idx = _probe_order(train.labels, cfg.pool_train)
    model = build_model(sc.arch)
    base_lr = cfg.lr
    opt = torch.optim.Adam(model.parameters(), lr=base_lr * sc.lr_warmup)
    epochs: list[dict[str, Any]] = []
    for epoch in range(sc.epochs):
        if epoch == sc.change and sc.lr is not None:
            for group in opt.param_groups:
                group["lr"] = base_lr * sc.lr_warmup * sc.lr
        if epoch == sc.change and sc.reinit is not None:
            if sc.reinit == "full":
                model = build_model(sc.arch)
                opt = torch.optim.Adam(model.parameters(), lr=base_lr)
            else:
                for module in model.last_blocks():
                    for sub in module.modules():
                        if hasattr(sub, "reset_parameters"):
                            sub.reset_parameters()
                opt = torch.optim.Adam(model.parameters(), lr=base_lr)
        x, y = _training_state(sc, epoch, train, carriers_u)
        model.train()
        perm = torch.randperm(len(x))
        for start in range(0, len(x), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        pool_x = torch.cat([pool_val_x, x[train_pool_idx]])
        pool_y = torch.cat([pool_val_y, y[train_pool_idx]])
        with torch.no_grad():
            val_acc = float((model(val_x).argmax(1) == val.labels).float().mean())
            logits = model(pool_x)
        cheap = explain(model, pool_x, pool_y, ("grad_cam", "saliency"))
        ig = explain(model, pool_x[:cfg.num_probes], pool_y[:cfg.num_probes], ("integrated_gradients",),
                     n_steps=cfg.ig_steps)
        maps = {**cheap, **ig}
        pooled = {m: downsample(v, cfg.size).reshape(-1, cfg.size, cfg.size).half() for m, v in maps.items()}
        epochs.append({"epoch": epoch, "maps": pooled, "pred": logits.argmax(1).to(torch.int8),
                       "targets": pool_y.to(torch.int8), "val_acc": val_acc, "strength": sc.strength(epoch)})
    masks = torch.cat([pool_val_m, train.masks[train_pool_idx]])
    masks = F.adaptive_avg_pool2d(masks, cfg.size)[:, 0].half()
    return {"scenario": sc.to_dict(), "name": sc.name, "epochs": epochs, "labels": torch.cat([pool_val_y,
            train.labels[train_pool_idx]]).to(torch.int8), "masks": masks, "num_probes": cfg.num_probes,
            "pool_val": cfg.pool_val, "pool_train": cfg.pool_train, "config": asdict(cfg)}


def scenario_from_dict(d: dict[str, Any]) -> Scenario:
    d = dict(d)
    d["swap"] = tuple(d["swap"])
    return replace(Scenario(family=d.pop("family"), part=d.pop("part"), arch=d.pop("arch"), seed=d.pop("seed")), **d)
