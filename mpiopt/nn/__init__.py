"""Torch models as one flat float32 parameter vector (mpiopt's view of a neural network).

- :mod:`.flat`    :class:`FlatModel`: parameters, BatchNorm statistics and gradients as views of flat buffers,
                  tensor-boundary partitioning, a layout hash to check that ranks agree.
- :mod:`.models`  ``mlp``, ``cnn`` (small), ``cnn_bn``, ``resnet18`` (the paper's CIFAR ResNet18 for 32x32 images).
- :mod:`.train`   minibatch subgradient + penalties, evaluation, BatchNorm recalibration.
- :mod:`.evaluate` offline evaluation of the model snapshots stored in a result file.

Nothing here imports torch at module import time of the package: import the submodules.
"""
