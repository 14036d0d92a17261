"""Snapshot every global RNG (torch, random, numpy) and assert none was consumed (PITFALLS 4, 19)."""

import random

import numpy as np
import torch


def rng_snapshot():
    return torch.get_rng_state().clone(), random.getstate(), np.random.get_state()[1].copy()


def assert_rng_unchanged(before):
    after = rng_snapshot()
    assert torch.equal(before[0], after[0]), "global torch RNG consumed"
    assert before[1] == after[1], "python random consumed"
    assert np.array_equal(before[2], after[2]), "numpy RNG consumed"
