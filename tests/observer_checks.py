"""The observer contract checked after two seeded fits, one with and one without a monitor: weights, every buffer,
the optimizer's state, the global torch RNG, train/eval flags and ``requires_grad`` are bitwise the same."""

import torch


def assert_same_training(trainer_a, model_a, rng_a, trainer_b, model_b, rng_b) -> None:
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # weights and BatchNorm buffers
        assert torch.equal(state_a[key], state_b[key]), key
    opt_a = trainer_a.optimizers[0].state_dict()["state"]
    opt_b = trainer_b.optimizers[0].state_dict()["state"]
    assert opt_a.keys() == opt_b.keys()
    for idx in opt_a:
        for name, value in opt_a[idx].items():
            other = opt_b[idx][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (idx, name)
    assert torch.equal(rng_a, rng_b)
    for (name, mod_a), (_, mod_b) in zip(model_a.named_modules(), model_b.named_modules()):
        assert mod_a.training == mod_b.training, name
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
        assert p_a.requires_grad == p_b.requires_grad
