"""The alarm rule on synthetic statistic series: every alarm path, floors that do not learn from near misses,
accumulation of a slide, known events that neither alarm by themselves nor hide a strong change."""

import math

import pytest

from lightning_xai.drift._rule import AlarmRule
from lightning_xai.drift._stats import average_ranks, class_means, row_spearman

RULE = dict(window=5, threshold=4.0, slack=0.5, cusum_threshold=5.0, learn_below=1.0, min_spread=0.25,
            event_factor=2.0, settle=1)


def run(series, *, warmup=3, events=(), **overrides):
    """Alarm epochs of the rule over ``series`` (a list of {stream: value} per epoch)."""
    rule = AlarmRule(**{**RULE, **overrides})
    out = []
    for epoch, values in enumerate(series):
        decision = rule.decide(values, warmup=epoch < warmup, event=epoch in events)
        if decision.alarm:
            out.append(epoch)
    return out


def noisy(n, level=0.1, wobble=0.15, key="grad_cam|lag/validation"):
    """A stationary stream: ``level`` times a deterministic wobble of +-``wobble`` (log units)."""
    return [{key: level * math.exp(wobble * math.sin(1.7 * e))} for e in range(n)]


def test_quiet_series_never_alarms():
    assert run(noisy(30)) == []
    # several streams with independent wobble
    series = [{**a, **b} for a, b in zip(noisy(30), noisy(30, 0.05, 0.2, "saliency|class/training"))]
    assert run(series) == []


def test_sudden_jump_alarms_at_that_epoch_once():
    series = noisy(20)
    for e in range(10, 20):
        series[e] = {"grad_cam|lag/validation": series[e]["grad_cam|lag/validation"] * 4.0}
    alarms = run(series)
    assert alarms == [10]  # the episode: a lasting new level does not alarm again


def test_one_method_that_sees_the_change_is_not_outvoted():
    quiet = [{**a, **b} for a, b in zip(noisy(15), noisy(15, 0.2, 0.1, "saliency|lag/validation"))]
    quiet[9]["grad_cam|lag/validation"] *= 4.0  # only Grad-CAM sees it
    assert run(quiet) == [9]


def test_slide_accumulates_instead_of_being_absorbed():
    # +25 % per epoch from epoch 8: each step is a moderate z, the CUSUM adds them up
    series = noisy(20, wobble=0.05)
    for e in range(8, 20):
        series[e] = {"grad_cam|mass/validation": 0.4 * 0.85 ** (e - 7)}
    for e in range(8):
        series[e]["grad_cam|mass/validation"] = 0.4 * math.exp(0.03 * math.sin(e))
    alarms = run(series)
    assert alarms and 9 <= alarms[0] <= 12, alarms
    # without accumulation (CUSUM threshold out of reach) the sudden rule sees it only much later
    late = run(series, cusum_threshold=1e6, threshold=6.0)
    assert not late or late[0] >= alarms[0] + 3, (late, alarms)


def test_near_miss_does_not_widen_the_floor():
    series = noisy(20, wobble=0.05)
    series[8]["grad_cam|lag/validation"] *= math.exp(0.25 * 3.5)  # z about 3.5: no alarm, but suspicious
    series[10]["grad_cam|lag/validation"] *= math.exp(0.25 * 4.5)
    rule = AlarmRule(**RULE)
    history_after = None
    alarms = []
    for e, values in enumerate(series):
        if rule.decide(values, warmup=e < 3).alarm:
            alarms.append(e)
        if e == 8:
            history_after = list(rule.streams["grad_cam|lag/validation"].history)
    assert max(history_after) < math.log(0.1 * 1.2), "the near miss joined the floor"
    assert alarms == [10]


def test_mass_fall_is_the_evidence_not_a_rise():
    key = "grad_cam|mass/validation"
    rise = [{key: 0.4 * (1.0 if e < 10 else 3.0)} for e in range(15)]
    fall = [{key: 0.4 * (1.0 if e < 10 else 0.3)} for e in range(15)]
    assert run(rise) == []
    assert run(fall) == [10]


def test_known_event_alone_does_not_alarm_but_a_strong_change_with_it_does():
    series = noisy(20)
    for e in range(10, 13):  # the learning rate steps up: maps move twice as much for a while
        series[e]["grad_cam|lag/validation"] *= 2.0 ** (1.0 - (e - 10) / 3)
    assert run(series, events={10}) == []
    # a cue planted at the same epoch moves the maps 20x: seen through the raised threshold
    strong = [dict(v) for v in series]
    for e in range(10, 20):
        strong[e]["grad_cam|lag/validation"] *= 20.0
    assert run(strong, events={10}) == [10]


def test_warmup_epochs_never_alarm():
    series = [{"grad_cam|lag/validation": 1.0 if e == 2 else 0.1} for e in range(6)]
    assert run(series, warmup=3) == []


def test_state_round_trip_gives_the_same_decisions():
    series = noisy(20)
    series[12]["grad_cam|lag/validation"] *= 5
    full = run(series)
    rule = AlarmRule(**RULE)
    alarms = []
    for e, values in enumerate(series[:8]):
        rule.decide(values, warmup=e < 3)
    resumed = AlarmRule(**RULE)
    resumed.load_state_dict(rule.state_dict())
    for e, values in enumerate(series[8:], start=8):
        if resumed.decide(values, warmup=False).alarm:
            alarms.append(e)
    assert alarms == full == [12]


def test_average_ranks_and_spearman_match_scipy_style_reference():
    import torch

    x = torch.tensor([[3.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 1.0]])
    assert average_ranks(x).tolist() == [[3.0, 0.5, 0.5, 2.0], [1.0, 1.0, 1.0, 3.0]]
    a = torch.rand(6, 50, generator=torch.Generator().manual_seed(0))
    b = a + 0.3 * torch.rand(6, 50, generator=torch.Generator().manual_seed(1))
    from torchmetrics.functional import spearman_corrcoef

    ref = torch.stack([spearman_corrcoef(a[i], b[i]) for i in range(6)]).double()
    assert torch.allclose(row_spearman(a, b), ref, atol=1e-5)
    flat = torch.zeros(1, 50)
    assert math.isnan(float(row_spearman(flat, a[:1])[0]))


def test_class_means_average_normalised_maps_per_class():
    import torch

    maps = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    means, counts = class_means(maps, labels, torch.tensor([True, True, True]), torch.tensor([0, 1]))
    assert counts.tolist() == [2, 1]
    assert means.tolist() == [[0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize("bad", [{"threshold": 0}, {"window": 1}, {"min_spread": -1.0}, {"event_factor": 0.5},
                                 {"settle": -1}, {"threshold": float("nan")}])
def test_detector_refuses_bad_rule_constants(bad):
    from lightning_xai.drift import DriftDetector

    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"`{name}`"):
        DriftDetector(**bad)
