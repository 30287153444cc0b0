"""An inference twin of a model with BatchNorm folded into the preceding convolution.

In eval mode BatchNorm is an affine map per channel, y = s * (x - mean) + beta
with s = gamma / sqrt(var + eps), so conv -> bn is one convolution with weight
w * s and bias (b - mean) * s + beta. Folding saves a full pass over every
activation (13% of a CIFAR ResNet's CPU time, make bench), and ReLUs whose
input nobody else reads can run in place. Grid points move the *source*
model's weights in place; `refresh()` then recomputes the folded weights from
them, which costs one pass over the weights, not over the data.

Built with torch.fx; a model that cannot be traced, or whose twin does not
reproduce it on real inputs, is used as it is.
"""

from __future__ import annotations

import logging

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class FoldedModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        gm = torch.fx.symbolic_trace(model)
        modules = dict(gm.named_modules())
        self.pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]] = []
        self._folded_names: list[str] = []
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and type(modules.get(node.target)) is nn.BatchNorm2d:
                bn = modules[node.target]
                prev = node.args[0]
                conv = modules.get(prev.target) if prev.op == "call_module" else None
                if (type(conv) is nn.Conv2d and len(prev.users) == 1 and bn.running_mean is not None
                        and conv.padding_mode == "zeros"):
                    twin = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                     conv.padding, conv.dilation, conv.groups, bias=True,
                                     device=conv.weight.device, dtype=conv.weight.dtype).requires_grad_(False)
                    twin.weight.data = torch.empty_like(conv.weight)  # same memory format as the source
                    name = f"folded_{len(self.pairs)}"
                    gm.add_submodule(name, twin)
                    prev.target = name
                    node.replace_all_uses_with(prev)
                    gm.graph.erase_node(node)
                    self.pairs.append((conv, bn, twin))
                    self._folded_names.append(name)
        for node in gm.graph.nodes:
            _make_relu_inplace(gm, node)
        gm.graph.lint()
        gm.recompile()
        self.gm = gm
        # the source's parameters by name, for `arguments`; the twin shares the unfolded modules
        source = {id(p): name for name, p in model.named_parameters()}
        self._source_names = {id(p): source[id(p)] for p in gm.parameters() if id(p) in source}
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the folded weights from the source model's current weights and statistics."""
        for conv, bn, twin in self.pairs:
            s, shift = _scale_shift(bn, conv.bias, bn.weight, bn.bias)
            torch.mul(conv.weight, s.view(-1, 1, 1, 1), out=twin.weight)
            twin.bias.copy_(shift)

    def arguments(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The twin's parameters for `torch.func.functional_call`, as functions of the source's:
        `values` gives source parameters by `named_parameters` name (leaves that require grad,
        say); the others are the source's own. The folded weights are computed from them with
        the formula `refresh` uses, differentiably, so a gradient or a Hessian with respect to
        the source's parameters passes through the fold exactly (the BatchNorm statistics are
        buffers: constants)."""
        def value(p: torch.Tensor | None) -> torch.Tensor | None:
            return None if p is None else values.get(self._source_names.get(id(p), ""), p)

        args = {f"gm.{name}": value(p) for name, p in self.gm.named_parameters()}
        for (conv, bn, _), name in zip(self.pairs, self._folded_names):
            s, shift = _scale_shift(bn, value(conv.bias), value(bn.weight), value(bn.bias))
            args[f"gm.{name}.weight"] = value(conv.weight) * s.view(-1, 1, 1, 1)
            args[f"gm.{name}.bias"] = shift
        return args

    def forward(self, *args, **kwargs):
        return self.gm(*args, **kwargs)


def _scale_shift(bn: nn.BatchNorm2d, conv_bias, gamma, beta) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, shift) of conv -> bn folded: weight * s, and shift as the bias."""
    s = torch.rsqrt(bn.running_var + bn.eps)
    if gamma is not None:
        s = s * gamma
    shift = -bn.running_mean * s
    if conv_bias is not None:
        shift = shift + conv_bias * s
    if beta is not None:
        shift = shift + beta
    return s, shift


def _make_relu_inplace(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    if not node.args:
        return
    src = node.args[0]
    # never in place on the model's input (the data set) or on a tensor read elsewhere
    if not isinstance(src, torch.fx.Node) or src.op in ("placeholder", "get_attr") or len(src.users) != 1:
        return
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        node.target = torch.relu_
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    elif node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.ReLU:
        name = f"relu_inplace_{node.name}"
        gm.add_submodule(name, nn.ReLU(inplace=True))
        node.target = name


def fold(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str]:
    """(the folded twin of an eval-mode model, or the model itself where folding does not apply
    or changes its outputs; one line saying which, for the log and the surface file)."""
    try:
        twin = FoldedModel(model).eval()
    except Exception as exc:  # fx cannot trace every model (data-dependent control flow, ...)
        why = f"BatchNorm not folded: the model cannot be traced ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        return model, why
    if not twin.pairs:
        return model, "BatchNorm not folded: no convolution -> BatchNorm pair"
    with torch.inference_mode():
        want = model(example).float()
        got = twin(example.clone()).float()
    scale = float(want.abs().max().clamp_min(1.0))
    diff = float((got - want).abs().max())
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
        why = (f"BatchNorm not folded: the folded twin changed the outputs by up to {diff:.2g} (fp32 check); "
               "evaluated unfolded")
        log.warning("%s", why)
        return model, why
    return twin, f"BatchNorm folded into {len(twin.pairs)} convolutions (fp32 check: max output difference {diff:.2g})"
