"""The evaluation protocol's switches by data set (DARTS CIFAR: auxiliary towers, cutout 16 px, drop
path 0.2 on by default; off on the 8x8 bundled data), and the protocol reaching a ColorNAS network:
cutout is applied to the colour image before the colour model splits it, with drop path ramped."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from dartboard.data.datasets import DatasetInfo, Splits
from dartboard.platform.cli.train_settings import protocol_switches
from dartboard.spaces.catalog import resolve
from dartboard.spaces.colour_genotype import ColourGenotype
from dartboard.training import protocol
from dartboard.training.final import TrainConfig, train_genotype


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagefolder"])
def test_the_published_switches_are_the_defaults_on_cifar_and_image_data(dataset):
    assert protocol_switches(dataset) == {"auxiliary": True, "cutout": True, "drop_path_prob": 0.2}
    assert protocol_switches(dataset, auxiliary=False, cutout=None, drop_path_prob=0.0) == {
        "auxiliary": False, "cutout": True, "drop_path_prob": 0.0}


@pytest.mark.parametrize("dataset", ["digits", "colour-digits"])
def test_the_small_bundled_data_trains_without_them_unless_asked(dataset):
    assert protocol_switches(dataset) == {"auxiliary": False, "cutout": False, "drop_path_prob": 0.0}
    assert protocol_switches(dataset, cutout=True, drop_path_prob=0.1)["cutout"] is True


def test_a_colornas_network_trains_with_cutout_on_the_colour_image_and_ramped_drop_path(monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 16
    splits = Splits(TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)),
                    TensorDataset(torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)),
                    DatasetInfo("tiny-colour", 3, 8, 10))
    cell = resolve("darts-v2")
    genotype = ColourGenotype("rgb", (cell, cell, cell), (8,))
    seen, probs = [], []
    real_cutout = protocol.cutout

    def recording_cutout(x, length):
        seen.append((tuple(x.shape), length))
        return real_cutout(x, length)

    monkeypatch.setattr(protocol, "cutout", recording_cutout)
    cfg = TrainConfig(channels=4, layers=2, epochs=2, batch_size=n, seed=0, cutout=True, cutout_length=3,
                      drop_path_prob=0.2)

    import dartboard.training.final as final

    real_network_of = final.network_of

    def hooked(*args, **kwargs):  # every channel's network records the drop path it runs with
        net = real_network_of(*args, **kwargs)
        for ch in net.channels:
            ch.register_forward_pre_hook(lambda m, _: probs.append(round(m.drop_path_prob, 6)) if m.training else None)
        return net

    monkeypatch.setattr(final, "network_of", hooked)
    result = train_genotype(genotype, splits, cfg)
    assert seen == [((n, 3, 8, 8), 3)] * 2  # one batch per epoch, the whole colour image
    assert probs == [0.0] * 3 + [0.1] * 3  # R, G, B networks; 0.2 * epoch / 2 epochs
    assert result.parameters > 0
