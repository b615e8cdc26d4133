"""A run's random choices (flipped labels, held-out images, epoch order, size caps) are independent streams."""

import pytest
import torch

from smec_fast.config import resolve_config
from smec_fast.data import build_data, epoch_batches, symmetric_noise, validation_split_index
from smec_fast.data.image_split import random_subset_index
from smec_fast.seeding import stream, stream_seed

N, RATE = 2000, 0.4


def flipped(seed: int) -> torch.Tensor:
    clean = torch.randint(0, 7, (N,), generator=torch.Generator().manual_seed(99))
    return symmetric_noise(clean, RATE, 7, seed) != clean


@pytest.mark.parametrize("seed", range(6))
def test_held_out_images_are_not_chosen_by_the_noise(seed):
    held_out, kept = validation_split_index(N, 0.1)
    mask = flipped(seed)
    # 200 held-out images: their flipped share is 0.4 give or take 0.035 (one standard deviation)
    assert abs(mask[held_out].float().mean().item() - RATE) < 0.1
    assert abs(mask[kept].float().mean().item() - RATE) < 0.03


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("epoch", range(3))
def test_epoch_order_does_not_follow_the_noise(seed, epoch):
    order = torch.cat([index for index, _ in epoch_batches(N, 100, train=True, seed=seed, epoch=epoch)])
    first = order[: round(RATE * N)]  # the first 40 % of the epoch's batches
    assert abs(flipped(seed)[first].float().mean().item() - RATE) < 0.06


@pytest.mark.parametrize("seed", range(3))
def test_size_cap_does_not_follow_the_noise(seed):
    kept = random_subset_index(N, N // 2, seed)
    assert abs(flipped(seed)[kept].float().mean().item() - RATE) < 0.05


def test_validation_labels_of_a_run_carry_the_noise_rate():
    # Seed 2 is the one whose noise once drew the very permutation that chose the validation images.
    cfg = resolve_config(cli_values=dict(image_size=32, synthetic_train_size=400, synthetic_test_size=16,
                                         noise_rate=RATE, val_fraction=0.25, seed=2))
    data = build_data(cfg)
    for split in (data.val, data.train):
        assert abs((split.labels != split.clean_labels).float().mean().item() - RATE) < 0.1


def test_streams_are_stable_and_distinct():
    assert stream_seed("epoch-order", 0, 1) == stream_seed("epoch-order", 0, 1)
    seeds = {stream_seed(name, *keys) for name in ("symmetric-noise", "subset", "epoch-order", "validation-split")
             for keys in [(0,), (1,), (2,), (0, 1), (1, 0)]}
    assert len(seeds) == 20 and all(0 <= s < 2**63 for s in seeds)
    a, b = stream("x", 3), stream("x", 3)
    assert torch.equal(torch.randperm(50, generator=a), torch.randperm(50, generator=b))
