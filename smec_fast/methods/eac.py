"""EAC: erasing attention consistency (Zhang et al., ECCV 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smec_fast.augment import noise_choice, random_erasing
from smec_fast.distributed import shard_of_batch
from smec_fast.losses import SplitMergeConsistency
from smec_fast.split_merge import split_and_flip

from .base import PixelNoise, TrainingMethod, epoch_generator, register


@register
class EacMethod(TrainingMethod):
    """EAC: Zhang, Wang, Ling and Deng, "Learn From All: Erasing Attention Consistency for Noisy Label
    Facial Expression Recognition", ECCV 2022 (reference code github.com/zyh-uaiaaaa/Erasing-Attention-
    Consistency).

    The erased image and a horizontal flip both go through the network (two forwards, each with its own
    batch-norm statistics), and the CAM of every class of the flipped view, flipped back, must match the CAM of
    the main view (MSE over B x K x h x w, classifier weight detached). Loss: CE on the main view + lambda *
    L_flip, lambda = 5. Erasing: probability 0.5, area 2-25 % of the image, aspect 0.3-3.3 (torchvision's
    RandomErasing with `scale=(0.02, 0.25)`), the erased pixels set to the mean colour. The flip consistency is
    SMEC's L_con with a 1x1 grid.

    `official=False` (the shared recipe): each image is erased once and its flip is the mirror of the erased
    image; the loader's random flips stay on.

    `official=True`, as its src/dataset.py and src/main.py train:
    - no random flips in the loader (its transforms have none);
    - the main view gets Gaussian pixel noise (variance 30 on the 0-255 scale) with probability 0.5, then
      erasing;
    - with noisy labels (`noisy_labels`: any label file other than the clean list; here, any noise applied), the
      flipped view is the mirror of the image before noise and erasing, erased independently of the main view;
      with clean labels it is the mirror of the noised, erased main view;
    - the optimisation of `official_recipe`: Adam, ExponentialLR(0.9) per epoch, batch 32, and lr 2e-4,
      which the repository's README gives for a ResNet-18 backbone (its code's 1e-4 is for its ResNet-50).
    Under torchrun, which images are noised and erased is drawn for the global batch; the noise values are
    drawn per process.
    """

    name = "eac"
    options = ("eac_lambda",)
    # src/main.py: 60 epochs, Adam, ExponentialLR(0.9) stepped per epoch, batch 32, lambda 5; lr 2e-4, which its
    # README gives for a ResNet-18 backbone (the code's 1e-4 is for its ResNet-50).
    official_recipe = {"epochs": 60, "lr": 2e-4, "lr_decay": 0.9, "batch_size": 32, "eac_lambda": 5.0}
    uses_cam = True

    def __init__(self, lambda_flip: float = 5.0, erase_p: float = 0.5, erase_scale=(0.02, 0.25),
                 official: bool = False, noisy_labels: bool = True):
        super().__init__()
        self.consistency = SplitMergeConsistency((1, 1), detach_weight=True)
        self.lambda_flip = lambda_flip
        self.erase_p = erase_p
        self.erase_scale = (float(erase_scale[0]), float(erase_scale[1]))
        self.official = official
        self.noisy_labels = noisy_labels
        self.loader_hflip = not official
        self.generator = epoch_generator(0, 0, stream=1)
        self.noise = PixelNoise(stream=1)

    @classmethod
    def from_config(cls, cfg, labels, num_classes, noise_rate, clean_labels=None):
        return cls(cfg.eac_lambda, official=cfg.recipe == "official", noisy_labels=noise_rate > 0)

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.generator = epoch_generator(seed, epoch, stream=1)
        self.noise.start_epoch(seed, epoch)

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(main view, flipped view) of a batch, as the recipe builds them."""
        shard = shard_of_batch()
        def erase(batch: torch.Tensor) -> torch.Tensor:
            return random_erasing(batch, self.generator, p=self.erase_p, scale=self.erase_scale, shard=shard)

        if not self.official:
            erased = erase(images)
            return erased, split_and_flip(erased, (1, 1))
        main = erase(self.noise(images, noise_choice(images.shape[0], self.generator, shard=shard)))
        if not self.noisy_labels:
            return main, main.flip(-1)
        return main, erase(images.flip(-1))

    def forward(self, model, images, labels, index):
        main, flipped = self.views(images)
        logits, feat = model(main)
        _, feat_flip = model(flipped)
        loss_ce = F.cross_entropy(logits.float(), labels)
        loss_flip = self.consistency(feat, feat_flip, model.cam_weight)
        loss = loss_ce + self.lambda_flip * loss_flip
        return loss, {"ce": loss_ce.detach(), "flip": loss_flip.detach()}
