import pytest
import torch

from smec_fast.errors import ConfigError
from smec_fast.split_merge import split_and_flip


@pytest.mark.parametrize("grid", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 4)])
def test_pieces_are_piece_major_row_by_row_and_flipped(grid):
    b, h, w = 3, 8, 12
    images = torch.randn(b, 3, h, w)
    pieces = split_and_flip(images, grid)
    rows, cols = grid
    ph, pw = h // rows, w // cols
    assert pieces.shape == (rows * cols * b, 3, ph, pw)
    for r in range(rows):
        for c in range(cols):
            p = r * cols + c
            for i in range(b):
                expected = images[i, :, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].flip(-1)
                assert torch.equal(pieces[p * b + i], expected)


def test_indivisible_image_is_a_clear_error():
    with pytest.raises(ConfigError, match="a 10x10 image does not divide into a 4x4 grid"):
        split_and_flip(torch.zeros(1, 3, 10, 10), (4, 4))
