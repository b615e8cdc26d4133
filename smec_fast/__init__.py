"""smec_fast: a fast, verified trainer for noisy-label facial expression recognition with SMEC.

SMEC (split and merge consistency regularization; Kim et al., IEEE Access 2023) trains a ResNet-18 with
cross-entropy plus early-learning regularisation and a consistency loss between the class activation map
of each face and the merged maps of its horizontally flipped halves.

The Python API (smec_fast.api) is re-exported here:

    model = smec_fast.load("runs/mine/selected.pt")
    results = model.predict("photo.jpg", detect=True)
    metrics = smec_fast.train(dataset="folder", data="faces", out="runs/mine")

Importing the package loads no torch; the calls load what they need.
"""

from smec_fast.api import (
    FaceResult,
    FerModel,
    ImageInput,
    ImageResult,
    PhotoResult,
    load,
    read_sweep,
    sweep,
    train,
)
from smec_fast.config import TrainConfig
from smec_fast.errors import CheckpointError, ConfigError, DataError, SmecFastError
from smec_fast.version import __version__

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FaceResult",
    "FerModel",
    "ImageInput",
    "ImageResult",
    "PhotoResult",
    "SmecFastError",
    "TrainConfig",
    "__version__",
    "load",
    "read_sweep",
    "sweep",
    "train",
]
