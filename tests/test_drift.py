import io

import pytest
import torch

from lightning_xai.drift import DriftDetector, DriftReport


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": 1.5}, "warmup_epochs"),
        ({"window": 0}, "window"),
        ({"drop_sigmas": -1.0}, "drop_sigmas"),
        ({"min_drop": float("inf")}, "min_drop"),
    ],
)
def test_argument_validation(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*{list(kwargs.values())[0]!r}"):
        DriftDetector(**kwargs)


def test_all_bad_arguments_reported_at_once():
    with pytest.raises(ValueError, match="window.*min_drop"):
        DriftDetector(window=0, min_drop=-1)


def test_warmup_then_absolute_threshold():
    det = DriftDetector(threshold=0.5, warmup_epochs=2)
    for epoch in range(2):
        report = det.update(epoch, {"grad_cam": _t(0.1, 0.9)})
        assert not report.any and report.warmup
        assert report.flags["grad_cam"].tolist() == [False, False]
        assert "warming up" in report.summary()
    report = det.update(2, {"grad_cam": _t(0.1, 0.9)})
    assert not report.warmup
    assert report.flags["grad_cam"].dtype == torch.bool
    assert report.flags["grad_cam"].tolist() == [True, False]
    assert report.num_flagged == {"grad_cam": 1} and report.any
    assert report.flagged_probes == [0]
    assert "threshold" in report.reasons[0] and "probe 0 (grad_cam)" in report.reasons[0]


def test_relative_drop_rule():
    det = DriftDetector(threshold=0.5, warmup_epochs=0, window=4, drop_sigmas=3.0, min_drop=0.2)
    steady, noisy = [0.95, 0.96, 0.95, 0.96], [0.6, 1.0, 0.6, 1.0]
    for epoch, (a, b) in enumerate(zip(steady, noisy)):
        assert not det.update(epoch, {"saliency": _t(a, a, b)}).any
    # probe 0: 0.70 is 0.255 below a steady mean -> flagged; probe 1: 0.80 only 0.155 below -> not (min_drop);
    # probe 2: 0.55 is 0.25 below a noisy mean (std 0.2) but not 3 sigmas -> not flagged
    report = det.update(4, {"saliency": _t(0.70, 0.80, 0.55)})
    assert report.flags["saliency"].tolist() == [True, False, False]
    assert "below its recent mean 0.955" in report.reasons[0]
    # the history is updated after deciding: the window now holds 0.96, 0.95, 0.96, 0.70
    assert det.history["saliency"][:, 0].tolist() == pytest.approx([0.96, 0.95, 0.96, 0.70])


def test_relative_rule_needs_both_conditions():
    det = DriftDetector(threshold=0.0, warmup_epochs=0, window=3, drop_sigmas=0.0, min_drop=0.0)
    det.update(0, {"m": _t(0.9)})
    assert det.update(1, {"m": _t(0.8)}).any  # any drop below the mean with both margins at 0
    assert not det.update(2, {"m": _t(0.95)}).any


def test_nan_is_ignored():
    det = DriftDetector(threshold=0.5, warmup_epochs=0, window=3)
    det.update(0, {"m": _t(0.9, 0.9)})
    report = det.update(1, {"m": _t(float("nan"), 0.9)})
    assert report.flags["m"].tolist() == [False, False]
    det.update(2, {"m": _t(float("nan"), 0.9)})
    # probe 0's statistics use only the 0.9: a drop to 0.65 (above threshold) is 0.25 below that mean
    report = det.update(3, {"m": _t(0.65, float("nan"))})
    assert report.flags["m"].tolist() == [True, False]
    assert "over 1 epoch(s)" in report.reasons[0]
    assert torch.isnan(det.history["m"][:, 0]).sum() == 2  # placeholders only, never in the statistics


def test_history_is_capped():
    det = DriftDetector(window=5)
    for epoch in range(50):
        det.update(epoch, {"a": torch.rand(4), "b": torch.rand(4)})
    assert det.history["a"].shape == (5, 4) and det.history["b"].shape == (5, 4)
    assert det.num_updates == 50 and det.last_epoch == 49


def test_report_summary_names_probes_methods_and_predictions():
    det = DriftDetector(threshold=0.5, warmup_epochs=0)
    report = det.update(
        7,
        {"grad_cam": _t(0.2, 0.9, 0.3), "saliency": _t(0.9, 0.9, 0.1)},
        prediction_changed=torch.tensor([True, False, False]),
        probe_ids=["cat_0", "dog_1", "bird_2"],
    )
    assert isinstance(report, DriftReport)
    assert report.num_flagged == {"grad_cam": 2, "saliency": 1}
    assert report.flagged_probes == [0, 2]
    text = report.summary()
    assert "epoch 7" in text and "2 probe(s)" in text
    assert "| cat_0 | grad_cam | 0.200 |" in text and "| yes |" in text
    assert "| bird_2 | saliency | 0.100 |" in text
    assert "Prediction changed for 1 of the 2 flagged probe(s)" in text
    assert any("prediction changed: yes" in r for r in report.reasons)
    assert report.prediction_changed.tolist() == [True, False, False]
    calm = det.update(8, {"grad_cam": _t(0.9, 0.9, 0.9)})
    assert "No explanation drift at epoch 8" in calm.summary()


def test_update_validation():
    det = DriftDetector()
    det.update(0, {"m": torch.rand(3)})
    with pytest.raises(ValueError, match="probe set must stay fixed"):
        det.update(1, {"m": torch.rand(4)})
    with pytest.raises(ValueError, match="same length"):
        det.update(1, {"m": torch.rand(3), "n": torch.rand(2)})
    with pytest.raises(ValueError, match="prediction_changed"):
        det.update(1, {"m": torch.rand(3)}, prediction_changed=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"similarity\['m'\]"):
        det.update(1, {"m": torch.rand(3, 1)})
    with pytest.raises(TypeError, match="epoch"):
        det.update(1.0, {"m": torch.rand(3)})


def _sims(gen, n=6):
    return {"grad_cam": torch.rand(n, generator=gen), "saliency": 0.5 + 0.5 * torch.rand(n, generator=gen)}


def test_state_round_trip_weights_only_and_identical_future():
    gen = torch.Generator().manual_seed(0)
    sequence = [_sims(gen) for _ in range(12)]
    sequence[4]["grad_cam"][1] = float("nan")
    det = DriftDetector(threshold=0.4, warmup_epochs=2, window=3, drop_sigmas=1.0, min_drop=0.1)
    for epoch, sims in enumerate(sequence[:6]):
        det.update(epoch, sims)

    buffer = io.BytesIO()
    torch.save(det.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = DriftDetector(threshold=0.4, warmup_epochs=2, window=3, drop_sigmas=1.0, min_drop=0.1)
    restored.load_state_dict(state)
    assert restored.num_updates == det.num_updates and restored.last_epoch == 5
    for name in det.history:
        torch.testing.assert_close(restored.history[name], det.history[name], equal_nan=True, rtol=0, atol=0)

    flagged = 0
    for epoch, sims in enumerate(sequence[6:], start=6):
        a, b = det.update(epoch, sims), restored.update(epoch, sims)
        assert a.reasons == b.reasons
        for name in a.flags:
            assert torch.equal(a.flags[name], b.flags[name])
        flagged += sum(a.num_flagged.values())
    assert flagged > 0  # the comparison exercised some flags


def test_state_dict_is_plain():
    det = DriftDetector()
    det.update(0, {"m": torch.rand(2)})
    state = det.state_dict()

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return isinstance(value, (torch.Tensor, int, float, str))

    assert plain(state)
    fresh = DriftDetector()
    fresh.load_state_dict(DriftDetector().state_dict())
    assert fresh.num_updates == 0 and fresh.last_epoch is None and fresh.history == {}
    with pytest.raises(KeyError, match="history"):
        fresh.load_state_dict({"num_updates": 0, "last_epoch": -1, "methods": [], "method_updates": []})


def test_inference_tensors_and_device_of_flags():
    det = DriftDetector(warmup_epochs=0)
    with torch.inference_mode():
        sims = {"m": torch.tensor([0.1, 0.9])}
        changed = torch.tensor([True, False])
    report = det.update(0, sims, prediction_changed=changed)
    assert report.flags["m"].device == sims["m"].device and report.flags["m"].tolist() == [True, False]
    with torch.inference_mode():
        report = det.update(1, {"m": torch.tensor([0.9, 0.9])})
    assert det.state_dict()["history"][0].shape == (2, 2)
    assert not det.history["m"].is_inference()
