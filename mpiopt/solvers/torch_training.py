"""What the torch training solvers (``async_subgradient`` and its ``ddp`` baseline) share: the ten
training options, the epoch count and the evaluation of a model for a history row."""
from __future__ import annotations

import math
from typing import Any

from .. import options as O
from ..options import Option
from ..problems.base import settings
from ..problems.torch_models import TorchModelProblem

# u = m*u + g ; x -= (1-m) * alpha * gamma / sqrt(k) * u ; g += wd*x + l1*sign(x)
TRAINING_OPTIONS: tuple[Option, ...] = (
    Option("gamma", 1.0, "base step gamma of alpha*gamma/sqrt(k) (the paper gives none)", float,
           low=0.0, low_open=True),
    Option("momentum", 0.9, "momentum m of u = m*u + g, x -= (1-m)*step*u (paper: 0.9; 0 allowed)", float,
           low=0.0, high=1.0, high_open=True),
    Option("weight_decay", 5e-4, "L2 weight decay added to the subgradient (paper: 5e-4)", float, low=0.0),
    Option("l1", 1e-4, "L1 term l1*sign(x) added to the subgradient after the L2 term (paper: 1e-4)", float,
           low=0.0),
    O.batch_size(64, "minibatch size of each training rank"),
    Option("max_epochs", 10.0, "stop after this many epochs (samples drawn by all training ranks / N)", float,
           low=0.0, low_open=True),
    Option("eval_samples", 0, "test images used for evaluations (0: all)", int, low=0),
    Option("train_eval_samples", 1000, "training images used for the train loss of an evaluation", int, low=1),
    Option("bn_batches", 8, "train batches used to recalibrate BatchNorm statistics before an evaluation",
           int, low=1),
    Option("target_accuracy", 0.0, "stop (converged) when an evaluation reaches this test accuracy (0: never)",
           float, low=0.0, high=1.0),
)


def training_memory_estimate(problem_cls: type, cfg: dict[str, dict[str, Any]]) -> tuple[float, str] | None:
    """The images a training rank holds at once beyond the problem's estimate: a minibatch (and its
    activations and gradients, a few copies) and the bn_batches minibatches cached for BatchNorm."""
    shape = problem_cls.image_shape if issubclass(problem_cls, TorchModelProblem) else ()
    if not shape:
        return None
    s = cfg["solver"]
    image = 4.0 * math.prod(shape)
    return image * s["batch_size"] * (8 + s["bn_batches"]), settings(s, "batch_size", "bn_batches", section="solver")


def epochs(samples: int, n_train: int) -> float:
    """Epochs as counted by every torch training solver: samples drawn by all ranks / N."""
    return samples / max(1, n_train)


def steps_for_epochs(max_epochs: float, per_step: int, n_train: int) -> int:
    """The smallest t with t * per_step / N >= max_epochs."""
    t = max(0, math.ceil(max_epochs * n_train / per_step))
    while t > 0 and (t - 1) * per_step / n_train >= max_epochs:
        t -= 1
    while t * per_step / n_train < max_epochs:
        t += 1
    return t


def evaluator(problem: Any, opts: dict[str, Any], restore_buffers: bool = False, recalibrate: bool = True) -> Any:
    """The shared :class:`~mpiopt.nn.train.Evaluator` configured from the training options."""
    from ..nn.train import Evaluator
    return Evaluator(problem, opts["eval_samples"], opts["train_eval_samples"], opts["bn_batches"],
                     opts["batch_size"], restore_buffers=restore_buffers, recalibrate=recalibrate)


def evaluation_row(result: tuple[float, float, float, float]) -> dict[str, float]:
    """History values of an evaluation ``(train_loss, train_acc, test_loss, test_acc)``."""
    tr_loss, tr_acc, te_loss, te_acc = result
    return {"objective": tr_loss, "test_loss": te_loss, "test_accuracy": te_acc, "train_accuracy": tr_acc}
