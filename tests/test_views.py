"""The per-epoch views (lightning_xai.views): what is logged, read back from real TensorBoard files, and numbers
checked on hand-built models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tb_events import read_events
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD, ShapesDataset
from lightning_xai.render import caption_height
from lightning_xai.views import (
    VIEWS,
    ActivationMaxView,
    ActivationsView,
    DissectionView,
    MaxMinView,
    ProjectorView,
    ViewContext,
    attention_graphs,
    capture,
    dissect,
    extremes,
    maximize_class,
    nearest_centroid_accuracy,
    render_attention_graphs,
    set_change,
    silhouette,
)
from lightning_xai.views._write import write_view_output
from lightning_xai.writers import TensorBoardWriter


def small_cnn(num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(scope="module")
def shapes_context():
    ds = ShapesDataset(24, image_size=24, seed=5, shortcut_strength=1.0)
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([x[0] for x in items])
    labels = torch.tensor([x[1] for x in items])
    shape = torch.stack([x[2] for x in items])
    concepts = {name: shape * (labels == c).view(-1, 1, 1, 1) for c, name in enumerate(ds.classes)}
    concepts["marker"] = torch.stack([ds.marker_mask(i) for i in range(len(ds))])
    ids = torch.arange(100, 100 + len(ds))

    def make(model: nn.Module, **kw) -> ViewContext:
        return ViewContext(model, "5", images[:6], labels[:6], ids[:6], images, labels, ids, concepts, ds.classes,
                           SHAPES_MEAN, SHAPES_STD, **kw)

    return make


def test_every_view_is_side_effect_free_and_logs_under_its_tag(shapes_context, tmp_path):
    model = small_cnn().train()
    model[1].eval()  # a frozen BatchNorm stays frozen
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    sw = SummaryWriter(str(tmp_path))
    writer = TensorBoardWriter(sw)
    views = {name: cls() for name, cls in VIEWS.items()}
    views["activation_max"] = ActivationMaxView(steps=4)
    for epoch in range(2):
        ctx = shapes_context(model, epoch=epoch, step=10 * epoch)
        for view in views.values():
            assert write_view_output(writer, view(ctx), ctx.step) == []
    sw.close()
    assert torch.equal(rng, torch.get_rng_state())
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    events = read_events(tmp_path)
    for tag in ("xai/activations/top_channels", "xai/max_min/grid", "xai/activation_max/classes",
                "xai/dissection/units"):
        assert [e[0] for e in events["images"][tag]] == [0, 10], tag
    # dissection: 6 units x 5 images, 24 px enlarged to 72, two caption lines
    _, width, height, _ = events["images"]["xai/dissection/units"][0]
    assert (height, width) == (6 * (72 + caption_height(72, 2) + 2) + 2, 5 * 74 + 2)
    assert set(events["scalars"]) >= {
        "xai/activations/dead_fraction", "xai/max_min/change", "xai/projector/centroid_accuracy",
        "xai/projector/silhouette", "xai/activation_max/gain", "xai/dissection/units/marker",
        "xai/dissection/units/circle", "xai/dissection/max_iou/marker",
    }
    assert [s for s, _ in events["scalars"]["xai/max_min/change"]] == [10]  # nothing to compare with at first
    assert events["scalars"]["xai/max_min/change"][0][1] == 0.0  # same model, same pool: same sets
    assert "| unit | concept | IoU |" in events["texts"]["xai/dissection/top_units"][0][1]
    assert all(np.isfinite(v) for values in events["scalars"].values() for _, v in values)

    # activations: one row per probe (4 by default), the probe + 8 channels, 24 px enlarged to 72 with a caption
    _, width, height, _ = events["images"]["xai/activations/top_channels"][0]
    cell = 72 + caption_height(72, 1)
    assert (height, width) == (4 * (cell + 2) + 2, 9 * (72 + 2) + 2)
    # activation maximisation: one tile per class, enlarged to 96 px, two caption lines
    _, width, height, pixels = events["images"]["xai/activation_max/classes"][0]
    assert (height, width) == (96 + caption_height(96, 2) + 4, 4 * 98 + 2)


def test_max_min_grid_is_captioned_and_change_tracks_the_sets(shapes_context):
    model = small_cnn()
    view = MaxMinView(k=3, units=(0, 5))
    out = view(shapes_context(model))
    grid = out.images["xai/max_min/grid"]
    cell_w = 72  # 24 px enlarged 3x
    cell_h = cell_w + caption_height(cell_w, 3)
    rows = 4 + 2  # classes + units
    assert tuple(grid.shape) == (3, rows * (cell_h + 2) + 2, 6 * (cell_w + 2) + 2)
    strip = grid[:, 2 + cell_w : 2 + cell_h, 2 : 2 + cell_w]  # the first cell's caption strip
    assert int(strip.max()) > 128 and int(strip.min()) == 0  # white text on black
    assert "xai/max_min/change" not in out.scalars
    assert view(shapes_context(model)).scalars["xai/max_min/change"] == 0.0
    other = small_cnn(seed=1)
    change = view(shapes_context(other)).scalars["xai/max_min/change"]
    assert 0.0 < change <= 1.0
    state = view.state_dict()
    fresh = MaxMinView(k=3, units=(0, 5))
    fresh.load_state_dict(state)
    assert fresh(shapes_context(other)).scalars["xai/max_min/change"] == 0.0


def test_extremes_and_set_change():
    scores = torch.tensor([[0.0, 5.0], [3.0, 1.0], [2.0, 1.0], [9.0, -1.0]])
    top, bottom = extremes(scores, 2)
    assert top.tolist() == [[3, 1], [0, 1]] and bottom.tolist() == [[0, 2], [3, 1]]
    assert set_change([1, 2], [2, 1]) == 0.0 and set_change([1, 2], [3, 4]) == 1.0
    assert set_change([1, 2], [2, 3]) == pytest.approx(2 / 3)


def _planted_model() -> nn.Module:
    """Unit 0 of layer '1' fires exactly on pure-red pixels (pooled 2x2), unit 1 on noise, unit 2 is dead."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0, -1.0])
        conv.bias[0] = -0.5
        conv.weight[1, 1, 0, 0] = 1.0
        conv.bias[2] = -1.0
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 8 * 8, 2))


def _red_squares(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.rand(n, 3, 16, 16, generator=g)
    masks = torch.zeros(n, 1, 16, 16)
    for i in range(0, n, 2):  # half the images carry a red 4x4 square at an even position
        y, x = (2 * torch.randint(0, 7, (2,), generator=g)).tolist()
        images[i, :, y : y + 4, x : x + 4] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
        masks[i, :, y : y + 4, x : x + 4] = 1.0
    noise = (torch.rand(n, 1, 16, 16, generator=g) < 0.05).float()
    return images, masks, noise


def test_dissection_recovers_a_planted_unit():
    images, masks, noise = _red_squares()
    model = _planted_model()
    labels = torch.zeros(len(images), dtype=torch.long)
    ctx = ViewContext(model, "2", images[:4], labels[:4], torch.arange(4), images, labels,
                      torch.arange(len(images)), {"red square": masks, "noise": noise})
    view = DissectionView(top_quantile=0.02)
    out = view(ctx)
    result = view.last
    assert result.detector.tolist() == [True, False, False]
    assert result.label[0] == 0  # red square
    # the region (pixels above the threshold) lies on the squares only: IoU = |region| / |squares|
    acts = ctx_acts(model, images)
    up = nn.functional.interpolate(acts[:, :1], size=(16, 16), mode="bilinear", align_corners=False)
    region = up >= result.thresholds[0]
    assert not bool((region & (masks == 0)).any())
    assert result.iou[0, 0] == pytest.approx(float(region.sum()) / float(masks.sum()))
    assert result.iou[0, 0] > 0.2 and result.iou[1].max() < 0.04
    assert result.iou[2].max() == 0.0  # the dead unit selects nothing
    assert out.scalars["xai/dissection/units/red square"] == 1.0
    assert out.scalars["xai/dissection/units/noise"] == 0.0
    assert out.texts["xai/dissection/top_units"].splitlines()[4].startswith("| 0 | red square |")
    # the picture's first row is unit 0 on its strongest images: the region outline (yellow) sits on a square
    picture = out.images["xai/dissection/units"]
    first = picture[:, 2 : 2 + 64, 2 : 2 + 64]  # 16 px enlarged 4x
    yellow = (first[0] > 200) & (first[1] > 200) & (first[2] < 50)
    assert bool(yellow.any())
    # Bau et al.'s quantile 0.005 (41 pixels) falls inside the plateau of tied top values, kept whole
    default = dissect(ctx_acts(model, images), {"red square": masks})
    assert default.units_per_concept() == {"red square": 1} and float(default.iou[0, 0]) > 0.2


def ctx_acts(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return capture(model, images, layer="2")[1]


def test_dissection_rejects_bad_masks():
    with pytest.raises(ValueError, match="concept 'x' mask must have shape"):
        dissect(torch.zeros(4, 2, 4, 4), {"x": torch.zeros(3, 1, 8, 8)})
    with pytest.raises(ValueError, match="top_quantile"):
        DissectionView(top_quantile=1.5)


def test_activation_maximisation_raises_the_target_score():
    model = small_cnn().train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    images, start, final = maximize_class(model, [0, 1, 2, 3], (3, 24, 24), steps=16, mean=SHAPES_MEAN,
                                          std=SHAPES_STD)
    assert images.shape == (4, 3, 24, 24) and float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert bool((final > start).all()), (start, final)
    # and above every natural image of the dataset (64 shapes): the optimisation found what the class responds to
    ds = ShapesDataset(64, image_size=24, seed=1)
    natural = capture(model, torch.stack([ds[i][0] for i in range(64)]))[0].max(dim=0).values
    assert bool((final > natural).all()), (natural, final)
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(bool((p.grad == 3.0).all()) for p in model.parameters())
    # a fixed seed: the same model gives the same image
    again = maximize_class(model, [0, 1, 2, 3], (3, 24, 24), steps=16, mean=SHAPES_MEAN, std=SHAPES_STD)[0]
    assert torch.equal(images, again)


def test_activation_max_every_n_epochs(shapes_context):
    view = ActivationMaxView(every_n_epochs=2, steps=2)
    assert view(shapes_context(small_cnn(), epoch=1)).images == {}
    assert "xai/activation_max/classes" in view(shapes_context(small_cnn(), epoch=2)).images
    with pytest.raises(ValueError, match=r"ActivationMaxView: `steps=0`: must be an int in \[1, 4096\]"):
        ActivationMaxView(steps=0)


def test_class_separation_scores():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    separated = 10.0 * nn.functional.one_hot(labels, 4).float() + 0.1 * torch.randn(40, 4, generator=g)
    assert nearest_centroid_accuracy(separated, labels) == 1.0
    assert silhouette(separated, labels) > 0.9
    mixed = torch.randn(40, 4, generator=g)
    assert nearest_centroid_accuracy(mixed, labels) < 0.6
    assert abs(silhouette(mixed, labels)) < 0.2
    # silhouette by hand: two points per class on a line
    x = torch.tensor([[0.0], [1.0], [4.0], [6.0]])
    y = torch.tensor([0, 0, 1, 1])
    s = [(5.0 - 1) / 5.0, (4.0 - 1) / 4.0, (3.5 - 2) / 3.5, (5.5 - 2) / 5.5]  # (b - a) / max(a, b)
    assert silhouette(x, y) == pytest.approx(sum(s) / 4)
    assert np.isnan(silhouette(x, torch.zeros(4, dtype=torch.long)))
    assert silhouette(torch.zeros(4, 2), y) == 0.0  # all points equal: defined, not NaN


def test_projector_files_readable_by_tensorboard(shapes_context, tmp_path):
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    sw = SummaryWriter(str(tmp_path))
    writer = TensorBoardWriter(sw)
    view = ProjectorView(every_n_epochs=2)
    for epoch in range(3):
        ctx = shapes_context(small_cnn(), epoch=epoch, step=epoch)
        out = view(ctx)
        assert len(out.embeddings) == (epoch % 2 == 0)
        write_view_output(writer, out, ctx.step)
    sw.close()
    assert (tmp_path / "projector_config.pbtxt").is_file()
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    plugin = ProjectorPlugin(base_plugin.TBContext(logdir=str(tmp_path), multiplexer=multiplexer))
    plugin._update_configs()
    config = plugin._configs["."]
    assert [e.tensor_name for e in config.embeddings] == ["xai/projector:00000", "xai/projector:00002"]
    embedding = config.embeddings[1]
    assert list(embedding.tensor_shape) == [24, 16]  # 24 pool images, 16 features (the Linear's input)
    assert list(embedding.sprite.single_image_dim) == [24, 24]
    apps = plugin.get_plugin_apps()
    tensor = Client(apps["/tensor"]).get("/tensor?run=.&name=xai/projector:00002")
    assert np.frombuffer(tensor.get_data(), dtype=np.float32).size == 24 * 16
    metadata = Client(apps["/metadata"]).get("/metadata?run=.&name=xai/projector:00002").get_data(as_text=True)
    rows = metadata.strip().split("\n")
    assert rows[0].split("\t") == ["id", "label", "prediction", "correct"] and len(rows) == 25
    assert rows[1].split("\t")[0] == "100"


def test_activations_view_options():
    with pytest.raises(ValueError, match=r"`num_channels=0`: must be an int in \[1, 256\]"):
        ActivationsView(num_channels=0)
    with pytest.raises(ValueError, match="MaxMinView: `units="):
        MaxMinView(units=("a",))


def test_attention_graph_finds_the_one_patch_the_model_reads():
    """A model that decides on the top-left quarter only: its minimal sufficient region is that patch."""

    class TopLeft(nn.Module):
        def forward(self, x):
            score = 20.0 * (x[:, 0, :8, :8].mean(dim=(1, 2)) - 0.5)
            return torch.stack([score, -score], dim=1)

    images = torch.zeros(2, 3, 16, 16)
    images[:, 0, :8, :8] = 1.0
    graphs = attention_graphs(TopLeft(), images, torch.zeros(2, dtype=torch.long), grid=2, beam=3, keep=0.9)
    assert [g.roots for g in graphs] == [[(0,)], [(0,)]]
    assert graphs[0].full_probability > 0.99
    assert graphs[0].children[0][0][0] == 0 and graphs[0].children[0][0][1] < 0.5  # removing it loses the class
    picture, text = render_attention_graphs(images, graphs, class_names=["red", "other"])
    assert picture.dtype == torch.uint8 and picture.shape[0] == 3
    assert "1 minimal sufficient regions" in text and "red (p=1.00)" in text


def test_views_are_pure_torch():
    import ast
    import doctest
    from pathlib import Path

    import lightning_xai.views as pkg
    import lightning_xai.views.dissection as dissection_module

    files = sorted(Path(pkg.__file__).parent.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("lightning", "pytorch_lightning")) or name.startswith("lightning_xai"), (
                    path, name)
                assert not name.startswith("lightning_xai.callbacks"), (path, name)
    result = doctest.testmod(dissection_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_shapes_concept_masks():
    ds = ShapesDataset(8, image_size=24, seed=2, shortcut_strength=1.0)
    for i in range(8):
        item = ds.sample(i)
        concepts = ds.concept_masks(i)
        assert list(concepts) == [*ds.classes, "marker"]
        own = ds.classes[item["label"]]
        assert torch.equal(concepts[own], item["mask"]) and float(concepts[own].sum()) > 0
        assert all(float(m.sum()) == 0 for name, m in concepts.items() if name not in (own, "marker"))
        assert torch.equal(concepts["marker"], ds.marker_mask(i)) and float(concepts["marker"].sum()) == 9
    ds.set_shortcut(0.0)
    assert float(ds.concept_masks(0)["marker"].sum()) == 0


class _Broken:
    name = "broken"

    def __call__(self, ctx):
        raise RuntimeError("view exploded")


def test_runner_pool_concepts_failure_isolation_and_graphs(tmp_path):
    from lightning_xai.probes import select_probes
    from lightning_xai.views import ViewRunner

    with pytest.raises(ValueError, match="unknown names \\['heatmap'\\]"):
        ViewRunner(["heatmap"])
    with pytest.raises(ValueError, match="view_options\\['max_min'\\]"):
        ViewRunner(["max_min"], {"max_min": {"kk": 1}})
    with pytest.raises(ValueError, match=r"`view_options\['dissection'\]=\{\}`: must be options of a view named in `views`"):
        ViewRunner(["max_min"], {"dissection": {}})
    with pytest.raises(ValueError, match=r"`view_options\['attention_graphs'\]\['beams'\]=2`: no such option"):
        ViewRunner(["attention_graphs"], {"attention_graphs": {"beams": 2}})
    with pytest.raises(ValueError, match="size"):
        ViewRunner(["max_min"], {"pool": {"size": 0}})
    assert ViewRunner(["attention_graphs"]) and not ViewRunner([])
    ds = ShapesDataset(64, image_size=24, seed=4, shortcut_strength=1.0)
    runner = ViewRunner(["dissection", "max_min", "activations", "attention_graphs"],
                        {"pool": {"size": 16}, "attention_graphs": {"num_probes": 2, "grid": 2}})
    runner.build_pool(ds, class_names=ds.classes)
    assert len(runner.pool) == 16 and list(runner.concepts) == [*ds.classes, "marker"]
    assert runner.concepts["marker"].shape == (16, 1, 24, 24)
    runner.views = {"broken": _Broken(), **runner.views}
    probes = select_probes(ds, 4)
    sw = SummaryWriter(str(tmp_path))
    writer = TensorBoardWriter(sw)
    failures = runner.run(small_cnn(), "5", probes, writer, epoch=0, step=3, class_names=ds.classes)
    assert list(failures) == ["broken"] and "exploded" in str(failures["broken"])
    picture, text = runner.attention_graphs(small_cnn(), probes, writer, step=3, class_names=ds.classes)
    assert text.count("\n- ") == 2  # two probes
    sw.close()
    events = read_events(tmp_path)
    assert {"xai/max_min/grid", "xai/activations/top_channels", "xai/attention_graphs/probes"} <= set(events["images"])
    assert events["scalars"]["xai/dissection/units/marker"][0][0] == 3
    assert events["texts"]["xai/attention_graphs/summary"][0][1] == text
    assert runner.state_dict()["max_min"]["previous"]
    assert runner.history[0]["epoch"] == 0 and "xai/dissection/units/marker" in runner.history[0]["scalars"]
    # without concept_masks on the dataset: one concept per class from the pool's ground-truth masks
    plain = (torch.stack([ds[i][0] for i in range(8)]), torch.tensor([ds[i][1] for i in range(8)]),
             torch.stack([ds[i][2] for i in range(8)]))
    runner = ViewRunner(["dissection"], pool_size=8)
    runner.build_pool(plain, class_names=ds.classes)
    assert list(runner.concepts) == ds.classes
