"""DriftDetector on synthetic map series (no training): noise floor, alarms, long horizon, masks, state, text."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_xai.drift import REGIONS, DriftDetector, DriftReport
from lightning_xai.metrics.degenerate import DEGENERATE_KINDS, degenerate_kinds, degenerate_rows

N, S = 16, 16


def _blobs(n, seed, where=None):
    """(n, 1, S, S) smooth maps: a Gaussian blob per probe (random centres, or all at ``where`` = (x, y))."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2 if where is None else torch.tensor([where] * n)
    coords = (torch.arange(S) + 0.5) / S
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    d2 = (xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 0.02)[:, None]


def _noisy(base, epoch, scale=0.08, seed=0):
    g = torch.Generator().manual_seed(1000 * seed + epoch)
    noise = F.avg_pool2d(torch.rand(base.shape, generator=g), 3, stride=1, padding=1)
    return base + scale * noise


def _series(det, frames, **kw):
    return [det.update(e, {"grad_cam": f}, **kw) for e, f in enumerate(frames)]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"warmup_epochs": -1}, "warmup_epochs"), ({"window": 1.5}, "window"), ({"threshold": 0}, "threshold"),
     ({"min_spread": float("nan")}, "min_spread"), ({"horizon": 0}, "horizon"),
     ({"statistics": ("lag", "nope")}, "statistics"), ({"topk": 0.0}, "topk"), ({"size": 1}, "size"),
     ({"cusum_threshold": -1.0}, "cusum_threshold"), ({"gap_spread": float("inf")}, "gap_spread"),
     ({"probe_sigmas": -1.0}, "probe_sigmas")],
)
def test_argument_validation_names_argument_and_value(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*{list(kwargs.values())[0]!r}"):
        DriftDetector(**kwargs)


def test_bad_inputs_are_refused_clearly():
    det = DriftDetector()
    with pytest.raises(TypeError, match="maps"):
        det.update(0, torch.zeros(2, 1, 4, 4))
    det.update(0, {"grad_cam": torch.rand(4, 1, S, S)})
    with pytest.raises(ValueError, match="pool must stay fixed"):
        det.update(1, {"grad_cam": torch.rand(5, 1, S, S)})
    with pytest.raises(ValueError, match="pred"):
        det.update(1, {"grad_cam": torch.rand(4, 1, S, S)}, pred=torch.zeros(3))
    with pytest.raises(ValueError, match="masks"):
        det.update(1, {"grad_cam": torch.rand(4, 1, S, S)}, masks=torch.zeros(3, 1, 8, 8))


def test_noise_alone_never_alarms_and_scalars_are_complete():
    base = _blobs(N, 0)
    det = DriftDetector(warmup_epochs=3)
    reports = _series(det, [_noisy(base, e) for e in range(40)], pred=torch.zeros(N, dtype=torch.long))
    assert not any(r.alarm for r in reports)
    assert all(r.warmup for r in reports[:3]) and not any(r.warmup for r in reports[3:])
    for r in reports:
        assert set(r.scalars) <= DriftDetector.keys(["grad_cam"])
        assert all(math.isfinite(v) for v in r.scalars.values())
        assert r.scalars["xai/drift/alarm"] == 0.0
    assert {"xai/grad_cam/stability", "xai/grad_cam/topk_overlap", "xai/grad_cam/drift", "xai/grad_cam/shift",
            "xai/grad_cam/drift_score"} <= set(reports[-1].scalars)
    # the stability is the per-probe Spearman with the previous epoch
    assert reports[0].stability["grad_cam"].isnan().all()
    assert float(reports[-1].scalars["xai/grad_cam/stability"]) > 0.6


def test_sudden_change_alarms_at_that_epoch_and_says_where():
    before, after = _blobs(N, 0), _blobs(N, 1, where=(0.1, 0.1))  # every probe's evidence jumps to the top-left
    frames = [_noisy(before, e) for e in range(10)] + [_noisy(after, e) for e in range(10, 16)]
    labels = torch.arange(N) % 4
    det = DriftDetector(warmup_epochs=3)
    reports = _series(det, frames, labels=labels, probe_ids=[f"#{i}" for i in range(N)],
                      class_names=["circle", "square", "triangle", "cross"])
    alarms = [r.epoch for r in reports if r.alarm]
    assert alarms == [10]
    hit = reports[10]
    assert hit.evidence["sudden"] >= 1.0 and hit.num_flagged["grad_cam"] >= 8
    mv = hit.movement["grad_cam"]
    assert mv.region == "top-left" and mv.converged and mv.region_count >= 12
    assert mv.per_class[0][0] == "top-left"
    dx, dy = mv.centroid_shift.nanmean(0).tolist()
    assert dx < -0.1 and dy < -0.1
    line = hit.headline()
    assert "\n" not in line and "epoch 10" in line and "top-left" in line
    text = hit.details()
    assert "Where it moved" in text and "circle: top-left" in text and "#0" in text
    # a settled new behaviour stays "different from before" until accepted
    assert all(r.active for r in reports[10:]) and not any(r.alarm for r in reports[11:])
    assert reports[-1].scalars["xai/drift/active"] == 1.0 and "differ" in reports[-1].headline()
    det.accept()
    later = det.update(16, {"grad_cam": _noisy(after, 16)})
    assert not later.alarm and not later.active


def test_slow_slide_is_accumulated():
    a, b = _blobs(N, 0), _blobs(N, 1, where=(0.85, 0.15))
    # 10 still epochs, then the evidence slides 1/10 of the way per epoch: each step is small next to the noise
    frames = [_noisy(a, e, scale=0.15) for e in range(10)]
    frames += [_noisy(a * (1 - t / 10) + b * (t / 10), 10 + t, scale=0.15) for t in range(1, 11)]
    reports = _series(DriftDetector(warmup_epochs=3), frames)
    first = next(r.epoch for r in reports if r.alarm)
    assert 10 <= first < 15  # before the slide is half way
    hit = reports[first]
    assert max(hit.evidence.values()) >= 1.0
    assert hit.movement["grad_cam"].region == "top-right"


def test_evidence_leaving_the_masks_alarms():
    centres = _blobs(N, 0)
    masks = centres > 0.5
    frames = [_noisy(centres, e, scale=0.05) for e in range(8)]
    # from epoch 8 a second blob in the corner takes more and more of the mass, the object's blob stays
    corner = _blobs(N, 2, where=(0.9, 0.9))
    frames += [_noisy(centres + (0.3 + 0.3 * t) * corner, 8 + t, scale=0.05) for t in range(6)]
    reports = _series(DriftDetector(warmup_epochs=3), frames, masks=masks)
    first = next(r.epoch for r in reports if r.alarm)
    assert 8 <= first <= 10
    hit = reports[first]
    assert max(r.scores["grad_cam"].get("mass/validation", 0.0) for r in reports[first:]) > 0.2  # the mass fell
    mv = hit.movement["grad_cam"]
    assert mv.mass_now < mv.mass_before and mv.region == "bottom-right"
    assert "xai/grad_cam/mass_change" in hit.scalars


def test_degenerate_maps_are_reported_not_stable():
    base = _blobs(N, 0)
    det = DriftDetector(warmup_epochs=2)
    reports = []
    for e in range(8):
        frame = _noisy(base, e)
        frame[:4] = 0.0  # four probes never get any gradient
        frame[4] = float("nan") if e == 6 else frame[4]
        reports.append(det.update(e, {"saliency": frame}))
    last = reports[-1]
    assert last.degenerate["saliency"][:4].all() and last.stability["saliency"][:4].isnan().all()
    assert last.scalars["xai/saliency/degenerate"] == 4.0
    # the broken map is reported as such, and the next epoch is compared with the last usable map
    assert reports[6].stability["saliency"][4].isnan() and reports[6].degenerate["saliency"][4]
    assert reports[7].stability["saliency"][4] > 0.5
    assert all(math.isfinite(v) for r in reports for v in r.scalars.values())
    assert not any(r.alarm for r in reports)


def test_all_maps_degenerate_gives_no_stability_and_no_nan():
    det = DriftDetector(warmup_epochs=2)
    for e in range(5):
        r = det.update(e, {"grad_cam": torch.zeros(N, 1, S, S)})
        assert "xai/grad_cam/stability" not in r.scalars and not r.alarm
        assert r.scalars["xai/grad_cam/degenerate"] == N
        assert all(math.isfinite(v) for v in r.scalars.values())


def test_state_dict_round_trip_with_weights_only(tmp_path):
    base, after = _blobs(N, 0), _blobs(N, 1, where=(0.1, 0.9))
    frames = [_noisy(base, e) for e in range(9)] + [_noisy(after, e) for e in range(9, 14)]
    straight = DriftDetector(warmup_epochs=3)
    ref = _series(straight, frames, pred=torch.zeros(N, dtype=torch.long))
    first = DriftDetector(warmup_epochs=3)
    for e, f in enumerate(frames[:6]):
        first.update(e, {"grad_cam": f}, pred=torch.zeros(N, dtype=torch.long))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = DriftDetector(warmup_epochs=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for e, f in enumerate(frames[6:], start=6):
        r = resumed.update(e, {"grad_cam": f}, pred=torch.zeros(N, dtype=torch.long))
        assert r.alarm == ref[e].alarm and r.scalars == ref[e].scalars
    assert [r.epoch for r in ref if r.alarm] == [9]


def test_prime_gives_the_first_update_a_previous_frame():
    base = _blobs(N, 0)
    det = DriftDetector()
    det.prime({"grad_cam": base}, pred=torch.zeros(N, dtype=torch.long))
    r = det.update(0, {"grad_cam": base}, pred=torch.ones(N, dtype=torch.long))
    assert torch.allclose(r.stability["grad_cam"], torch.ones(N)) and r.prediction_changed.all()


def test_same_maps_twice_are_fully_similar():
    maps = _blobs(N, 3) + 0.01 * torch.rand(N, 1, S, S)
    det = DriftDetector()
    det.update(0, {"integrated_gradients": maps})
    r = det.update(1, {"integrated_gradients": maps.clone()})
    assert float(r.stability["integrated_gradients"].min()) >= 0.999


def test_report_is_the_contract_type_and_keys_cover_every_method():
    keys = DriftDetector.keys(["grad_cam", "saliency"])
    assert "xai/drift/alarm" in keys and "xai/saliency/drift" in keys and "xai/grad_cam/stability" in keys
    r = DriftDetector().update(0, {"grad_cam": _blobs(N, 0)})
    assert isinstance(r, DriftReport) and r.warmup and "learning" in r.headline()
    assert r.scalars["xai/drift/alarm"] == 0.0 and len(REGIONS) == 9


def test_degenerate_rule():
    maps = torch.stack([torch.rand(1, 4, 4) + 0.1, torch.zeros(1, 4, 4), torch.full((1, 4, 4), -2.0),
                        torch.full((1, 4, 4), float("nan")), torch.eye(4)[None] * float("inf")])
    assert [DEGENERATE_KINDS[k] for k in degenerate_kinds(maps).tolist()] == [
        "ok", "all zero", "constant", "non-finite", "non-finite"]
    assert degenerate_rows(maps).tolist() == [False, True, True, True, True]
    # multi-channel attributions are reduced first (sum of |values|): opposite signs do not cancel
    attr = torch.zeros(1, 3, 4, 4)
    attr[0, 0, 0, 0], attr[0, 1, 0, 0] = 1.0, -1.0
    assert not degenerate_rows(attr).item()
    assert degenerate_rows(torch.zeros(2, 7)).tolist() == [True, True]  # flattened rows


def test_common_statistic_tells_a_shared_move_from_independent_ones():
    """``common`` is about 1/N when maps move independently (objects at different places) and near 1 when every
    map gains the same place (a cue at a fixed position)."""
    det = DriftDetector(warmup_epochs=0)
    first = _blobs(64, 0)
    det.update(0, {"grad_cam": first})
    independent = det.update(1, {"grad_cam": _blobs(64, 1)}).statistics["grad_cam|common/validation"]
    cue = _blobs(64, 2, where=(0.9, 0.9))
    shared = det.update(2, {"grad_cam": 0.5 * _blobs(64, 1) + cue}).statistics["grad_cam|common/validation"]
    assert independent < 0.1, independent
    assert shared > 0.5, shared
    assert 0.0 <= independent <= 1.0 and 0.0 <= shared <= 1.0


def test_a_cue_at_one_place_is_seen_by_the_common_statistic_alone():
    """With only the ``common`` stream, a shared jump to one corner alarms at that epoch and noise does not."""
    base = _blobs(N, 0)
    frames = [_noisy(base, e, seed=3) for e in range(9)]
    frames += [_noisy(0.6 * base + _blobs(N, 5, where=(0.85, 0.85)), e, seed=3) for e in range(9, 12)]
    reports = _series(DriftDetector(warmup_epochs=3, statistics=("common",)), frames)
    assert [r.epoch for r in reports if r.alarm] == [9]
