"""One model over several ranks (evaluation.ranks_per_model): sharded by rows with
torch.distributed's FSDP2 (`fully_shard`), each rank holding, moving and evaluating its share.

The ranks of a group have joined one torch.distributed process group (run/groups.py makes it
from the MPI job: no second launcher). Here, torch only:

- `shard_model`: every parameter is cut into row blocks along dim 0 (torch.chunk's: the first
  ranks take ceil(rows / K) rows), each rank keeping one. A "filter" of the random directions is
  a row, so a rank normalises its rows alone and its direction is its rows of the whole one.
  Each element of a ModuleList (a transformer's blocks) is its own FSDP unit, and so is an
  untied Embedding or Linear outside them (an input embedding, an output head): a forward
  pass gathers one unit's weights at a time, then frees them.
- `Share`: which batches of a split this rank evaluates (batch r of each round of K batches),
  and the group's sum of a point's totals. Every rank runs every forward pass of a round (the
  gathers are collective): a rank without a batch in the last round runs the round's first
  again and counts nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch

from losslandscape.errors import UserError

log = logging.getLogger(__name__)


def shard_model(model: torch.nn.Module, names: list[str], device: torch.device,
                rows_of=None) -> tuple[dict, dict, int, int, list]:
    """Shard `model` in place over the default process group. Returns ({name: this rank's live
    rows of each moved tensor `names`}, {name: (the first of those rows in the whole tensor,
    the whole tensor's shape)}, this rank's parameter values, the model's, the FSDP units).

    A model whose parameters are on the meta device (inputs/checkpoints.build_on_meta) is
    sharded there; then each rank allocates its shards on `device` and fills them with
    `rows_of(name, start, stop)`, its rows of each parameter (read from the checkpoint): no
    rank ever holds a whole parameter. Its buffers (real) keep their values."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    rank, size = dist.get_rank(), dist.get_world_size()
    params = dict(model.named_parameters())
    moved_buffers = [n for n in names if n not in params]
    if moved_buffers:
        raise UserError(f"evaluation.ranks_per_model: {size} shards the parameters, but the directions move "
                        f"{moved_buffers[0]!r}, which is not one; move parameters only (directions.dir_type = "
                        '"weights")')
    whole = {k: tuple(p.shape) for k, p in params.items()}
    total = sum(p.numel() for p in params.values())
    mesh = init_device_mesh(device.type, (size,))
    units = _units(model)
    meta = any(p.is_meta for p in params.values())
    if meta and rows_of is None:
        raise ValueError("a model built on the meta device needs rows_of to fill its shards")
    for block in units:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    units.append(model)
    if meta:
        buffers = {k: b.detach().cpu().clone() for k, b in model.named_buffers()}
        model.to_empty(device=device)  # this rank's shards (and the buffers, filled again below)
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
    local, first = {}, {}
    held = 0
    with torch.no_grad():
        for k, p in model.named_parameters():
            t = p.to_local()  # a view of the shard FSDP gathers from: moved in place
            rows = whole[k][0] if whole[k] else 1
            chunk = -(-rows // size)
            start = min(rank * chunk, rows)
            if tuple(t.shape[1:]) != whole[k][1:] or t.shape[0] != min(start + chunk, rows) - start:
                raise RuntimeError(f"{k}: shard of shape {tuple(t.shape)} is not rows {start}.. of {whole[k]}")
            if meta and t.numel():
                t.copy_(rows_of(k, start, start + t.shape[0]).view(t.shape))
            held += t.numel()
            if k in names:
                local[k], first[k] = t, (start, whole[k])
    return local, first, held, total, units


def _units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules sharded as their own FSDP units (the root is one more): each element of a
    ModuleList (a transformer's blocks), and each Embedding or Linear outside them whose weights
    no other module shares (a Llama's input embedding and output head: gathered one at a time,
    not together with the root; GPT-2's tied pair stays in the root)."""
    blocks = [block for m in model.modules() if isinstance(m, torch.nn.ModuleList)
              for block in m if any(True for _ in block.parameters())]
    inside = {id(m) for block in blocks for m in block.modules()}
    owners: dict[int, int] = {}  # a parameter -> how many modules hold it directly
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    alone = [m for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.Linear))
             and id(m) not in inside and m is not model
             and all(owners[id(p)] == 1 for p in m.parameters(recurse=False))]
    return blocks + alone


class Share:
    """This rank's place in a group of `size` ranks that evaluate one sharded model together."""

    def __init__(self, rank: int, size: int, device: torch.device):
        self.rank, self.size, self.device = rank, size, torch.device(device)

    def mine(self, batches: Iterable) -> Iterator[tuple[object, bool]]:
        """(batch, counted) for each round of `size` batches: batch `rank` of the round, or in a
        last round too short for this rank, the round's first, not counted."""
        round_ = []
        for batch in batches:
            round_.append(batch)
            if len(round_) == self.size:
                yield round_[self.rank], True
                round_ = []
        if round_:
            yield (round_[self.rank], True) if self.rank < len(round_) else (round_[0], False)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The group's sum of a float64 tensor (every rank gets it)."""
        import torch.distributed as dist

        out = values.to(self.device).clone()
        dist.all_reduce(out)
        return out

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on some rank of the group (every rank must ask together)."""
        return bool(self.sum(torch.tensor([float(flag)], dtype=torch.float64)).item() > 0)
