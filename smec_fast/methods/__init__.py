"""Training objectives: how one batch's loss is computed for each `--method`, one module per method.

Importing the package registers every method (methods.base.register); `method_names()` lists them in this order.
"""

from .base import (
    HEADS,
    PixelNoise,
    TrainingMethod,
    basic_augmentation,
    build_method,
    method_class,
    method_names,
    model_head,
    narrowest_input_width,
    official_recipes,
    options_of_others,
    register,
)
from .smec import SmecMethod
from .ce import CrossEntropyMethod
from .elr import ElrMethod
from .eac import EacMethod
from .scn import ScnMethod
from .rul import RulMethod

__all__ = [
    "HEADS", "PixelNoise", "TrainingMethod", "basic_augmentation", "build_method", "method_class", "method_names",
    "model_head", "narrowest_input_width", "official_recipes", "options_of_others", "register",
    "SmecMethod", "CrossEntropyMethod", "ElrMethod", "EacMethod", "ScnMethod", "RulMethod",
]
