"""A small SGD trainer that writes checkpoints, for demos and the paper's minimizers.

SGD with momentum and weight decay and step decays of the learning rate, as in
Li et al. (2018), Sec. 5; the batch size is an option so that small-batch and
large-batch minimizers (and ones with and without weight decay) can be made.
Writes `model_0.pt` (the initialisation), `model_<epoch>.pt` every `save_every`
epochs and the last epoch, as `{"state_dict": ..., "epoch": ...}` that
`torch.load(weights_only=True)` reads.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape.inputs.batches import input_dtype
from losslandscape.inputs.checkpoints import build_and_load
from losslandscape.numerics.devices import pick_device
from losslandscape.inputs.losses import cross_entropy

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) over the whole split."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(targets), batch_size):
        total, _, right = cross_entropy(model(inputs[start:start + batch_size]), targets[start:start + batch_size])
        total_loss += total.item()
        correct += right.item()
    return total_loss / len(targets), 100.0 * correct / len(targets)


def learning_rate(cfg, epoch: int, step: int, steps_per_epoch: int) -> float:
    """SGD's learning rate in minibatch `step` (0-based, counted from the start) of `epoch`
    (1-based): lr times lr_gamma for every lr_steps epoch already finished, and in the first
    warmup_epochs epochs a linear rise, lr * (step + 1) / (warmup_epochs * steps_per_epoch)."""
    lr = cfg.lr * cfg.lr_gamma ** sum(epoch > m for m in cfg.lr_steps)
    warmup = cfg.warmup_epochs * steps_per_epoch
    return lr * (step + 1) / warmup if step < warmup else lr


def train(spec, device: torch.device | None = None) -> list[Path]:
    """Train spec.model on spec.data's train split on `device` (the command line's: picked from
    evaluation.device and the GPUs the environment gave; None: picked from evaluation.device
    alone); returns the checkpoints written."""
    cfg = spec.train
    torch.manual_seed(cfg.seed)
    device = pick_device(spec.evaluation.device) if device is None else device
    model = build_and_load(spec.model, datasets.input_channels(spec.data)).to(device)
    x_train, y_train = datasets.load_split(spec.data, "train").placed(device, dtype=input_dtype(model))
    x_test, y_test = datasets.load_split(spec.data, "test").placed(device, dtype=input_dtype(model))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(y_train) // cfg.batch_size)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_save(model, out_dir, 0, {})]
    gen = torch.Generator().manual_seed(cfg.seed)
    log.info("training %s on %s (%d images) for %d epochs on %s, batch %d",
             spec.model.name, spec.data.name, len(y_train), cfg.epochs, device, cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_train), generator=gen).to(device)
        for k, start in enumerate(range(0, len(order), cfg.batch_size)):
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, epoch, (epoch - 1) * steps_per_epoch + k, steps_per_epoch)
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_loss, train_acc = evaluate(model, x_train, y_train)
        test_loss, test_acc = evaluate(model, x_test, y_test)
        log.info("epoch %3d  train loss %.4f acc %6.2f%%  test loss %.4f acc %6.2f%%  lr %.4g  %.1fs",
                 epoch, train_loss, train_acc, test_loss, test_acc, opt.param_groups[0]["lr"],
                 time.perf_counter() - t0)
        if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
            written.append(_save(model, out_dir, epoch, {
                "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}))
    return written


def _save(model: torch.nn.Module, out_dir: Path, epoch: int, metrics: dict) -> Path:
    path = out_dir / f"model_{epoch}.pt"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"state_dict": state, "epoch": epoch, **metrics}, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    log.info("wrote %s", path)
    return path
