"""smec_fast: a fast, verified trainer for noisy-label facial expression recognition with SMEC.

SMEC (split and merge consistency regularization; Kim et al., IEEE Access 2023) trains a ResNet-18 with
cross-entropy plus early-learning regularisation and a consistency loss between the class activation map
of each face and the merged maps of its horizontally flipped halves.
"""

__version__ = "0.1.0"
