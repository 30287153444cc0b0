"""The model zoo and the one way to build a model: `build_model(name)`.

`name` is a zoo name (`list(ZOO)`) or "package.module:factory", a user's own
model: the module is imported, the factory called with no arguments, and it
must return a `torch.nn.Module`.

The zoo holds the networks of Li et al., "Visualizing the Loss Landscape of
Neural Nets" (NeurIPS 2018): CIFAR ResNets with and without skip connections,
wide ResNets, VGG-9 and DenseNet-121. Its CIFAR ResNets have He et al.'s
parameter-free shortcuts (option A), so their parameter counts are the paper's.

A user of the original code (tomgoldstein/loss-landscape) wants the `original_*`
models (models/original.py): every name of that code's CIFAR-10 model loader as
`original_<name>` (`original_resnet56`, `original_wrn56_2`, `original_vgg9`, ...),
with its 1x1-conv shortcuts and its parameter names, so that its checkpoints load
and compute what they computed there.

Every factory takes `num_classes` and `in_channels` and accepts any input of at
least 8x8 pixels.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn

from losslandscape.errors import UserError
from losslandscape.inputs.userimport import import_factory
from losslandscape.inputs.models.densenet import densenet121
from losslandscape.inputs.models.original import ORIGINAL
from losslandscape.inputs.models.resnet import cifar_resnet
from losslandscape.inputs.models.vgg import vgg9

__all__ = ["ZOO", "build_model", "list_models"]

_DEPTHS = (20, 32, 44, 56, 110)
_WIDTHS = (2, 4, 8)

# name -> factory(num_classes=10, in_channels=3); insertion order is the zoo order
ZOO: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(cifar_resnet, d) for d in _DEPTHS},
    **{f"resnet{d}_noshort": partial(cifar_resnet, d, shortcut=False) for d in _DEPTHS},
    **{f"wrn56_{k}": partial(cifar_resnet, 56, k) for k in _WIDTHS},
    **{f"wrn56_{k}_noshort": partial(cifar_resnet, 56, k, shortcut=False) for k in _WIDTHS},
    "vgg9": vgg9,
    "densenet121": densenet121,
    **ORIGINAL,
}


def _from_factory(name: str) -> nn.Module:
    """Import "package.module:factory" (see `userimport`) and call it with no arguments."""
    model = import_factory(name, "model.name")()
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model.name: {name!r} returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model: a zoo name, or "package.module:factory".

    `num_classes` and `in_channels` apply to zoo models only; a user's factory
    is called with no arguments and is responsible for its own shape.
    """
    if name in ZOO:
        return ZOO[name](num_classes=num_classes, in_channels=in_channels)
    if ":" in name:
        return _from_factory(name)
    if f"original_{name}" in ZOO:
        raise UserError(f"model.name: unknown model {name!r}; the original loss-landscape code's {name} "
                        f'is "original_{name}"')
    ours = [n for n in ZOO if n not in ORIGINAL]
    raise UserError(
        f"model.name: unknown model {name!r}; choose one of {', '.join(ours)}"
        ' or give "package.module:factory"; the original loss-landscape code\'s networks are'
        " original_<its name>, e.g. original_resnet56 (`losslandscape models` lists them all)"
    )


def list_models() -> list[tuple[str, int]]:
    """(name, parameter count for num_classes=10, in_channels=3), in zoo order."""
    rows = []
    for name, factory in ZOO.items():
        # the meta device allocates no memory and skips the random init: counting is instant
        with torch.device("meta"):
            model = factory(num_classes=10, in_channels=3)
        rows.append((name, sum(p.numel() for p in model.parameters())))
    return rows
