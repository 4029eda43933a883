"""The operator's large arrays, kept from one step to the next, and the double buffers of its chunk loops.

A fresh array of hundreds of MB costs its page faults on every step (on this project's CPU machines about as
much as the pass that fills it), so the [N, S] arrays and the [S, D] copy of the sampled centers are made
once and reused while the shapes stay the same. MXNet runs asynchronously: a chunk loop that queued all of
its hundreds of chunks at once would allocate every chunk's fresh arrays up front, so chunk loops write into
two buffers in turn and wait for a buffer's previous chunk before reusing it.
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx


@dataclass
class StepBuffers:
    """The large arrays of one step."""
    key: tuple                  # (N, S, D, kept): what the arrays were made for
    cos: mx.nd.NDArray          # [N, S] cosines, then (in place) the logits / s and their exp
    work: mx.nd.NDArray         # [N, S] as [S, N]: dL/dcos / |w|, transposed
    kept: mx.nd.NDArray | None  # [S, D] gathered float32 centers (float32 device bank, sample not full)


class BufferPool:
    """Hands out a step's buffers and takes them back once the step is applied.

    A step whose update never ran keeps its own buffers, so two outstanding steps never share one."""

    def __init__(self, ctx):
        self.ctx = ctx
        self._free: StepBuffers | None = None
        self._ones: dict[tuple[int, int], mx.nd.NDArray] = {}

    def take(self, N: int, S: int, D: int, kept: bool) -> StepBuffers:
        """The buffers given back by the previous step when the shapes match, else new ones."""
        key = (N, S, D, kept)
        buffers, self._free = self._free, None
        if buffers is None or buffers.key != key:
            buffers = None  # let the old arrays go before the new ones are made
            buffers = StepBuffers(key, mx.nd.empty((N, S), ctx=self.ctx), mx.nd.empty((N, S), ctx=self.ctx),
                                  mx.nd.empty((S, D), ctx=self.ctx) if kept else None)
        return buffers

    def give_back(self, buffers: StepBuffers) -> None:
        self._free = buffers

    def ones(self, rows: int, cols: int) -> mx.nd.NDArray:
        """A float32 array of ones on the compute context, kept between steps (shapes vary with N and D)."""
        key = (rows, cols)
        if key not in self._ones:
            self._ones[key] = mx.nd.ones(key, ctx=self.ctx)
        return self._ones[key]


class Alternating:
    """Two float32 buffers that a chunk loop uses in turn. Taking one waits until MXNet has finished the write
    queued into it two chunks ago, so Python runs at most two chunks ahead of the engine."""

    def __init__(self, shape: tuple[int, int], ctx):
        self.size = shape[0] * shape[1]
        self.flat = [mx.nd.empty((self.size,), ctx=ctx) for _ in range(2)]
        self.turn = 0

    def take(self, shape: tuple[int, int]) -> mx.nd.NDArray:
        buf = self.flat[self.turn]
        self.turn ^= 1
        buf.wait_to_read()
        return buf[:shape[0] * shape[1]].reshape(shape)
