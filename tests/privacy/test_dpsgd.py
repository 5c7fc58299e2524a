"""DP-SGD's sources of randomness: the noise is drawn on the parameters' device (Opacus draws
it there; PyTorch refuses a generator of another device), the Poisson sampling on the CPU."""

import torch

from fedlease.privacy import dpsgd


class RecordingGenerator:
    """Stands in for ``torch.Generator``: records the device it is made for."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def manual_seed(self, seed):
        self.seed = seed
        return self


def test_the_noise_generator_follows_the_parameters_device(monkeypatch):
    monkeypatch.setattr(dpsgd.torch, "Generator", RecordingGenerator)
    sampling, noise = dpsgd.step_generators(True, 7, torch.device("cuda", 0))
    assert sampling.device == torch.device("cpu")
    assert noise.device == torch.device("cuda", 0)
    assert sampling.seed == 7 and noise.seed == 7 + 2**31  # seeded apart


def test_on_the_cpu_both_are_real_generators_and_draw_apart():
    sampling, noise = dpsgd.step_generators(True, 7, "cpu")
    assert sampling.device == noise.device == torch.device("cpu")
    assert not torch.equal(torch.rand(4, generator=sampling), torch.rand(4, generator=noise))
    secret_a, _ = dpsgd.step_generators(False, 7, "cpu")
    secret_b, _ = dpsgd.step_generators(False, 7, "cpu")
    assert secret_a.initial_seed() != secret_b.initial_seed()
