"""The models people train, end to end: transformers (Grad-CAM equal to pytorch-grad-cam's), a compiled submodule,
a frozen backbone under no_grad, a multi-label head, an all-zero model, through real Trainer runs where the
monitor's path matters."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ExplanationMonitor
from lightning_xai.attribution import grad_cam, gradcam_layer
from lightning_xai.callbacks._reporter import captions
from lightning_xai.probes import ProbeSet

torchvision = pytest.importorskip("torchvision")

SIZE = 16


# ------------------------------------------------------------------------------- Grad-CAM on transformer layers


def _pytorch_grad_cam(net: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor, reshape) -> torch.Tensor:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=net, target_layers=[layer], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(t)) for t in target]))


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    flat = maps[:, 0].flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-7)).view(maps.shape[0], *maps.shape[2:])


def _assert_same_as_pytorch_grad_cam(net, x, reshape):
    found = gradcam_layer(net, x[:1])
    with torch.no_grad():
        target = net(x).argmax(1)
    ours = grad_cam(net, x, target)
    assert ours.shape == (x.shape[0], 1, *x.shape[-2:])
    assert bool((ours.flatten(1).amax(1) > ours.flatten(1).amin(1)).all())  # not flat: the grid is right
    # pytorch-grad-cam calls model.eval() and keeps hooks until closed: give it a copy.
    import copy

    reference = copy.deepcopy(net)
    layer = dict(reference.named_modules())[found.name]
    theirs = _pytorch_grad_cam(reference, layer, x, target, reshape)
    # Same maps up to pytorch-grad-cam's min-max normalisation (before its bilinear resize, which keeps the extremes).
    assert (_min_max(ours) - theirs).abs().max() < 2e-3


def test_torchvision_vit_grad_cam_equals_pytorch_grad_cam_with_its_reshape():
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=3).eval()
    nn.init.normal_(net.heads.head.weight)  # torchvision initialises the head to zero: every map would be zero

    def reshape(t):  # pytorch-grad-cam's documented ViT reshape: drop the class token, tokens to a 4x4 grid
        return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    _assert_same_as_pytorch_grad_cam(net, torch.randn(3, 3, 32, 32), reshape)


def test_timm_deit_grad_cam_drops_class_and_distillation_tokens():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, pretrained=False, num_classes=3).eval()

    def reshape(t):
        return t[:, 2:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    _assert_same_as_pytorch_grad_cam(net, torch.randn(2, 3, 64, 64), reshape)


def test_swin_grad_cam_reads_the_channels_last_stage():
    torch.manual_seed(0)
    net = torchvision.models.swin_t(weights=None, num_classes=3).eval()

    def reshape(t):
        return t.permute(0, 3, 1, 2)

    _assert_same_as_pytorch_grad_cam(net, torch.randn(2, 3, 32, 32), reshape)  # features.5, a 2x2 stage


# ------------------------------------------------------------------------------------------ Trainer scenarios


def _data(n: int = 12, multi_label: bool = False, size: int = SIZE) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    if multi_label:
        y = (torch.rand(n, 3, generator=g) > 0.5).float()
        y[torch.arange(n), torch.arange(n) % 3] = 1.0  # every sample has a positive label
    else:
        y = torch.arange(n) % 3
    return DataLoader(TensorDataset(x, y), batch_size=6)


class Classifier(pl.LightningModule):
    """Wraps a network; ``multi_label`` trains with BCE on multi-hot labels."""

    def __init__(self, net: nn.Module, multi_label: bool = False) -> None:
        super().__init__()
        self.net = net
        self.multi_label = multi_label

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(out, y)
        return nn.functional.cross_entropy(out, y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


class CompiledInside(Classifier):
    """``self.net = torch.compile(net)``: the pattern whose hooks a compiled module ignores."""

    def __init__(self) -> None:
        super().__init__(torch.compile(cnn(), backend="eager"))


class FrozenBackbone(Classifier):
    """A frozen backbone run under torch.no_grad() inside forward, a trained head (a common fine-tuning pattern)."""

    def __init__(self, spatial_head: bool = True) -> None:
        super().__init__(cnn())
        self.backbone = self.net[:4]
        self.head = (nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
                     if spatial_head else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))

    def forward(self, x):
        with torch.no_grad():
            feats = self.backbone(x)
        return self.head(feats)


def _fit(model: pl.LightningModule, monitor: ExplanationMonitor, tmp_path, *, multi_label: bool = False,
         epochs: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[monitor], num_sanity_val_steps=0)
    data = _data(multi_label=multi_label)
    trainer.fit(model, data, data)
    return trainer


def _monitor(**kwargs) -> ExplanationMonitor:
    kwargs.setdefault("methods", ("grad_cam", "saliency", "integrated_gradients"))
    options = {"integrated_gradients": {"n_steps": 4}} if "integrated_gradients" in kwargs["methods"] else {}
    options.update(kwargs.pop("method_options", {}))
    return ExplanationMonitor(num_probes=3, metrics=(), log_images=False, method_options=options, **kwargs)


def test_frozen_backbone_without_a_layer_after_it_fails_at_setup_with_the_cause(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"(?s)no method can explain.*torch.no_grad\(\).*'backbone'"):
        _fit(FrozenBackbone(spatial_head=False), _monitor(), tmp_path)


def test_an_attention_internal_as_layer_fails_at_setup_naming_reshape(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=8, pretrained=False, num_classes=3)
    with pytest.raises(MisconfigurationException, match=r"attention internal.*reshape="):
        _fit(Classifier(net), _monitor(layer="net.blocks.11.attn.k_norm"), tmp_path)


def test_multi_label_captions_list_positive_labels_and_the_sigmoid_score():
    probes = ProbeSet(torch.zeros(2, 3, 4, 4), torch.tensor([0, 2]), torch.tensor([7, 9]),
                      label_sets=torch.tensor([[1, 1, 0], [0, 0, 1]]))
    lines = captions(probes, torch.tensor([1, 2]), torch.tensor([0.61, 0.25]), ["cat", "dog", "car"],
                     torch.tensor([0, 2]))
    assert [line[1] for line in lines] == ["cat sig=.61", "car sig=.25"]  # the explained class and its score
    assert [line[0].split(" ", 1)[1] for line in lines] == ["cat+dog", "car"]  # "#<id> " + every positive label


def test_multi_label_probes_must_match_the_models_outputs(tmp_path):
    x = torch.randn(6, 3, SIZE, SIZE)
    y = torch.eye(4)[torch.arange(6) % 4]  # 4 classes for a 3-output model
    monitor = _monitor(probes=(x, y))
    with pytest.raises(MisconfigurationException, match="multi-hot labels have 4 classes but the model has 3"):
        _fit(Classifier(cnn()), monitor, tmp_path)


class ZeroHead(Classifier):
    def __init__(self) -> None:
        super().__init__(cnn())
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def training_step(self, batch, batch_idx):  # nothing learns: the maps stay all zero
        return (self(batch[0]) * 0).sum()


def test_all_zero_model_is_reported_at_setup_not_refused(tmp_path):
    monitor = _monitor()
    with pytest.warns(UserWarning, match="all zero at setup"):
        _fit(ZeroHead(), monitor, tmp_path)
    assert monitor.methods == ("grad_cam", "saliency", "integrated_gradients")


class ChannelsFirstTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(8, 8)

    def forward(self, tokens):
        return self.mix(tokens).transpose(1, 2)  # (N, C, T): an unusual token layout


class TokenNet(nn.Module):
    """Tokens (patches + a trailing summary token) without a patch-embedding conv, channels first after `block`."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 4 * 4, 8)
        self.block = ChannelsFirstTokens()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        patches = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # (N, 16, 48)
        tokens = self.embed(patches)
        tokens = torch.cat([tokens, tokens.mean(1, keepdim=True)], dim=1)  # (N, 17, 8)
        mixed = self.block(tokens)  # (N, 8, 17)
        return self.head(mixed[:, :, -1] + mixed[:, :, :-1].amax(2))


def _token_reshape(t):
    return t[:, :, :-1].reshape(t.shape[0], t.shape[1], 4, 4)


class SkipsItsConvLater(Classifier):
    """From epoch 1 on, forward bypasses the second conv: Grad-CAM on it fails then, saliency does not."""

    def __init__(self) -> None:
        super().__init__(cnn())
        self.skip = False

    def on_train_epoch_start(self):
        self.skip = self.current_epoch >= 1

    def forward(self, x):
        if self.skip:
            h = self.net[1](self.net[0](x))
            return self.net[4:](h)
        return self.net(x)


