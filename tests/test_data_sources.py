"""The data layer's one interface (inputs/batches.py): a split in memory (InMemory) and the same
split streamed by a DataLoader (Stream) give the same batches, counts, first batch, placement and
subsample, checked against the plain tensors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from losslandscape.errors import UserError
from losslandscape.inputs.batches import InMemory, Stream, in_memory

N = 23


@pytest.fixture
def tensors():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(N, 3, 4, 4, generator=gen), torch.randint(0, 5, (N,), generator=gen)


def both(x, y, batch=5):
    return InMemory(x, y), Stream(DataLoader(TensorDataset(x, y), batch_size=batch), "five-item batches")


def test_both_kinds_give_the_split_batch_by_batch(tensors):
    x, y = tensors
    for source in both(x, y):
        got = list(source.batches(5))
        assert [len(b.targets) for b in got] == [5, 5, 5, 5, 3]
        assert torch.equal(torch.cat([b.args[0] for b in got]), x)
        assert torch.equal(torch.cat([b.targets for b in got]), y)
        assert source.examples() == N
        first = source.first_batch(5)
        assert torch.equal(first.args[0], x[:5]) and torch.equal(first.targets, y[:5])
        assert torch.equal(source.first_input()[:5], x[:5])
    assert (InMemory(x, y).streamed, both(x, y)[1].streamed) == (False, True)


def test_in_memory_is_still_the_pair(tensors):
    x, y = tensors
    inputs, targets = InMemory(x, y)
    assert inputs is x and targets is y and InMemory(x, y)[1] is y
    with pytest.raises(ValueError, match="need as many targets as inputs"):
        in_memory(x, y[:3])


def test_placed_on_a_device_channels_last(tensors):
    x, y = tensors
    for source in both(x, y):
        placed = source.placed(torch.device("cpu"), channels_last=True)
        assert placed.streamed == source.streamed
        batches = list(placed.batches(5))
        assert all(b.args[0].is_contiguous(memory_format=torch.channels_last) for b in batches)
        assert torch.equal(torch.cat([b.args[0] for b in batches]), x)
        assert placed.first_batch(5).args[0].is_contiguous(memory_format=torch.channels_last)
        plain = source.placed(torch.device("cpu"))
        assert all(b.args[0].is_contiguous() for b in plain.batches(5))


def test_subsample_for_the_auto_search(tensors):
    x, y = tensors
    memory, stream = both(x, y)
    assert memory.subsample(0) is memory and stream.subsample(0) is stream
    # in memory: n evenly spaced examples, index k * N // n
    kept = memory.subsample(4)
    index = [0, 5, 11, 17]  # 0*23//4, 1*23//4, 2*23//4, 3*23//4
    assert torch.equal(kept.inputs, x[index]) and torch.equal(kept.targets, y[index])
    assert memory.subsample(N) is memory
    # streamed: its first batches, up to the one that reaches n examples
    assert [len(b.targets) for b in stream.subsample(7).batches(0)] == [5, 5]
    assert stream.subsample(7).examples() == 10


def test_a_stream_that_changes_between_readings_is_refused(tensors):
    x, y = tensors
    shuffled = Stream(DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True), "a shuffling loader")
    with pytest.raises(UserError, match="different batches on two readings"):
        shuffled.first_batch(5)
