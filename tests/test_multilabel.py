"""Multi-label probes: multi-hot labels (BCE-trained models) are explained per positive label, never dropped."""

from __future__ import annotations

import pytest
import torch

from lightning_xai.probes import ProbeSet, select_probes

MULTI_HOT = torch.tensor([
    [1, 1, 0, 0],  # 0: classes 0 and 1
    [1, 0, 0, 0],  # 1
    [0, 0, 0, 0],  # 2: no positive label
    [0, 1, 0, 1],  # 3
    [0, 0, 1, 0],  # 4
    [1, 0, 0, 1],  # 5
])


def _images(n: int = 6) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()


def test_each_probe_is_explained_for_one_of_its_positive_labels_covering_every_class():
    probes = select_probes((_images(), MULTI_HOT), num_probes=4)
    assert probes.multi_label
    # Round-robin over classes 0..3; a sample picked for class 0 is not picked again for class 1.
    assert probes.ids.tolist() == [0, 3, 4, 5]
    assert probes.labels.tolist() == [0, 1, 2, 3]
    assert torch.equal(probes.label_sets, MULTI_HOT[[0, 3, 4, 5]].bool())
    for label, row in zip(probes.labels.tolist(), probes.label_sets):
        assert row[label]  # every explained class is a positive label of its probe


def test_samples_without_positive_labels_come_last_and_explain_the_prediction():
    probes = select_probes((_images(), MULTI_HOT), num_probes=6)
    assert probes.ids.tolist() == [0, 3, 4, 5, 1, 2]
    assert probes.labels.tolist() == [0, 1, 2, 3, 0, -1]


def test_float_multi_hot_labels_from_a_dataset_of_dicts_and_lists():
    ds = [{"image": img, "labels": row.float()} for img, row in zip(_images(), MULTI_HOT)]
    from_dicts = select_probes(ds, num_probes=4)
    as_lists = select_probes([(img, row.tolist()) for img, row in zip(_images(), MULTI_HOT)], num_probes=4)
    reference = select_probes((_images(), MULTI_HOT), num_probes=4)
    assert from_dicts.fingerprint == as_lists.fingerprint == reference.fingerprint
    single = select_probes((_images(), MULTI_HOT.argmax(1)), num_probes=4)
    assert not single.multi_label and single.label_sets is None


def test_state_dict_round_trip_and_fingerprint(tmp_path):
    probes = select_probes((_images(), MULTI_HOT), num_probes=4)
    path = tmp_path / "probes.pt"
    torch.save(probes.state_dict(), path)
    restored = ProbeSet.from_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.label_sets, probes.label_sets) and restored.fingerprint == probes.fingerprint
    other = ProbeSet(probes.images, probes.labels, probes.ids, label_sets=probes.label_sets.roll(1, dims=1) | True)
    assert other.fingerprint != probes.fingerprint
    assert probes.subset(1, 3).label_sets.shape == (2, 4)


def test_multi_label_errors():
    with pytest.raises(ValueError, match="mixes multi-hot labels"):
        select_probes([(torch.zeros(3, 4, 4), torch.tensor([1, 0])), (torch.zeros(3, 4, 4), 1)], num_probes=2)
    with pytest.raises(ValueError, match="multi-hot label of 3 classes after one of 2"):
        select_probes([(torch.zeros(3, 4, 4), torch.tensor([1, 0])), (torch.zeros(3, 4, 4), torch.tensor([1, 0, 1]))],
                      num_probes=2)
    with pytest.raises(ValueError, match="`label_sets` must be None or a multi-hot"):
        ProbeSet(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), torch.tensor([0, 1]), label_sets=torch.rand(2, 3))
    with pytest.raises(ValueError, match="`labels` holds class 5"):
        ProbeSet(torch.zeros(1, 3, 4, 4), torch.tensor([5]), torch.tensor([0]), label_sets=torch.ones(1, 3))


def test_partly_unknown_single_labels_keep_the_known_ones():
    probes = select_probes((_images(3), torch.tensor([2, -1, 0])), num_probes=3)
    assert probes.labels.tolist() == [2, -1, 0] and not probes.multi_label
