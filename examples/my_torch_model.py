"""Your own torch model and data as a plug-in, trained by async_subgradient (sgd, hw, assm, passm) or
ddp: subclass TorchModelProblem, load the data in ``load`` and build the network in ``build_model``.

    mpirun -n 3 python -m mpiopt.run async_subgradient --problem my_torch_model \\
        --plugin examples/my_torch_model.py --set solver.max_epochs=5
"""
import numpy as np

from mpiopt import register_problem
from mpiopt.options import Option
from mpiopt.problems.torch_models import TorchModelProblem


@register_problem("my_torch_model")
class MyTorchModel(TorchModelProblem):
    summary = "two Gaussian blobs per class in 2-D, a small MLP (plug-in example)"
    n_classes = 3
    options = (Option("hidden", 32, "hidden units", int, low=1),
               Option("n_train", 0, "use only the first n training points (0: all)", int, low=0),
               Option("n_test", 0, "use only the first n test points (0: all)", int, low=0),
               Option("seed", 0, "seed of the data and of the initial weights", int, low=0))

    def load(self):
        """(X_train, y_train, X_test, y_test); inputs shaped (n, C, H, W) or (n, features)."""
        rng = np.random.default_rng(self.opts["seed"])
        centres = rng.normal(scale=3.0, size=(self.n_classes, 2))
        y = rng.integers(0, self.n_classes, 3000)
        X = (centres[y] + rng.standard_normal((3000, 2))).astype(np.float32)
        return X[:2500], y[:2500], X[2500:], y[2500:]

    def build_model(self):
        import torch
        torch.manual_seed(self.opts["seed"])            # same initial weights on every rank
        h = self.opts["hidden"]
        return torch.nn.Sequential(torch.nn.Linear(2, h), torch.nn.ReLU(), torch.nn.Linear(h, self.n_classes))

    def describe(self) -> str:
        return f"{self.name}: {self.n_train} train / {self.n_test} test points, MLP with {self.opts['hidden']} units"
