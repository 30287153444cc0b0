"""The pieces of one model across ranks (evaluation.ranks_per_model) that need no MPI job: a
rank's rows of a seeded direction, a rank's share of the batches, and the spec's refusals.
The MPI runs are in test_ranks_per_model.py."""

from __future__ import annotations

import pytest
import torch

from losslandscape import spec as specs
from losslandscape.errors import UserError
from losslandscape.numerics.directions import SeededDirection
from losslandscape.numerics.shard import Share


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"emb": torch.randn(101, 30, generator=g), "conv": torch.randn(7, 3, 3, 3, generator=g),
            "bias": torch.randn(11, generator=g)}


@pytest.mark.parametrize("norm, ignore", [("filter", "biasbn"), ("filter", "none"), ("dfilter", "biasbn"),
                                          ("weight", "none"), ("none", "biasbn")])
@pytest.mark.parametrize("size", [2, 3])
def test_a_ranks_rows_of_a_direction_are_those_rows_of_the_whole_one(norm, ignore, size):
    """Each rank's window (torch.chunk's rows, as FSDP cuts them) holds exactly the bits of those
    rows of the whole direction, x and a y made orthogonal to it, held or drawn block by block."""
    w = weights()
    x = SeededDirection(w, 3, 0, norm, ignore)
    y = SeededDirection(w, 3, 1, norm, ignore, along=x, coef=0.37)
    for rank in range(size):
        first = {}
        local = {}
        for k, t in w.items():
            chunk = -(-t.shape[0] // size)
            first[k] = min(rank * chunk, t.shape[0])
            local[k] = t[first[k]:first[k] + chunk].clone()
        for d in (x, y):
            win = d.window(local, first)
            for k, t in local.items():
                whole = d[k][first[k]:first[k] + t.shape[0]]
                assert torch.equal(win[k], whole), (k, rank)
                blocks = list(win.blocks(k, size=64))  # small blocks: several per window, some before it
                assert blocks[0][0] == 0 and blocks[-1][1] == t.shape[0]
                assert torch.equal(torch.cat([b for _, _, b in blocks]) if t.dim() > 1 else blocks[0][2], whole)


def test_norms_over_a_whole_tensor_cannot_be_windowed():
    w = weights()
    with pytest.raises(ValueError, match="whole norm"):
        SeededDirection(w, 3, 0, "layer", "biasbn").window(w, {k: 0 for k in w})


@pytest.mark.parametrize("count", [4, 5, 1])
def test_each_rank_counts_its_batches_once_and_every_rank_runs_every_round(count):
    """Batch r of each round of 2; a last round too short for rank 1 gives it the round's first,
    not counted: both ranks run the same number of forward passes, and every batch counts once."""
    batches = list(range(count))
    shares = [list(Share(r, 2, torch.device("cpu")).mine(batches)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == -(-count // 2)
    counted = sorted(b for share in shares for b, c in share if c)
    assert counted == batches


@pytest.mark.parametrize("overrides, words", [
    ({"evaluation.ranks_per_model": "2", "directions.dir_type": "states"}, "buffers, which are not sharded"),
    ({"evaluation.ranks_per_model": "2", "evaluation.hold_directions": "false", "directions.store": "seed",
      "directions.norm": "layer"}, "scales a tensor by its whole norm"),
    ({"evaluation.ranks_per_model": "0"}, "evaluation.ranks_per_model"),
])
def test_the_spec_refuses_what_a_sharded_model_cannot_do_in_one_line(overrides, words):
    with pytest.raises(UserError, match=words):
        specs.from_dict({}, overrides)


def test_an_untied_embedding_and_head_are_units_of_their_own_and_a_tied_pair_stays_in_the_root():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from losslandscape.numerics.shard import _units

    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=2))
        gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2))
    units = _units(llama)
    assert units[:2] == list(llama.model.layers) and units[2:] == [llama.model.embed_tokens, llama.lm_head]
    units = _units(gpt2)
    assert units[:2] == list(gpt2.transformer.h) and units[2:] == [gpt2.transformer.wpe]  # wte and lm_head: tied
