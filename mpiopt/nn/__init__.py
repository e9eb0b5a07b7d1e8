"""Torch models as one flat float32 parameter vector (mpiopt's view of a neural network).

- :mod:`.flat`    :class:`FlatModel`: parameters and gradients as views of two flat buffers,
                  tensor-boundary partitioning, a layout hash to check that ranks agree.
- :mod:`.models`  ``mlp``, ``cnn`` (small), ``resnet18`` (the paper's CIFAR ResNet18 for 32x32 images).
- :mod:`.train`   minibatch subgradient + penalties, evaluation, BatchNorm recalibration.

Nothing here imports torch at module import time of the package: import the submodules.
"""
