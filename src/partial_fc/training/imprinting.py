"""PFC_INIT_CENTERS=imprint: the embedding pass over the training images that head/imprint.py turns into centers.

Rank k embeds images shard_range(n, W, k) of the dataset (a contiguous block in file order, each image once,
unflipped) with the run's backbone in inference mode (BatchNorm on its moving statistics, as verification
runs it), normalises each embedding, and keeps them with their labels: n / W x D float32 on each rank. The
class sums then reach their owning ranks in bounded rounds (head/imprint.py). Progress: a tqdm bar on rank
0's stderr for each of the two passes.
"""
from __future__ import annotations

import sys

import mxnet as mx
import numpy as np
from tqdm import tqdm

from ..config import Config
from ..data.loader import FaceIter
from ..head import imprint
from ..head.memory_bank import MemoryBank
from ..head.sharding import shard_range


class _InOrder(FaceIter):
    """FaceIter over images [lo, hi) in file order, unflipped; batches past hi repeat image hi - 1 (dropped)."""

    def __init__(self, dataset, batch_size: int, lo: int, hi: int, **kwargs):
        self._lo, self._hi = lo, hi
        super().__init__(dataset, batch_size, 0, 1, flip=False, **kwargs)

    def positions(self, step: int):
        index = np.minimum(self._lo + step * self.batch_size + np.arange(self.batch_size), self._hi - 1)
        return index.astype(np.int64), np.zeros(self.batch_size, bool)


def embed_part(mod, dataset, comm, cfg: Config, ctx) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised embeddings float32 [n_k, D], labels int64 [n_k]) of this rank's block of the images."""
    lo, count = shard_range(len(dataset), comm.size, comm.rank)
    B = cfg.batch_size
    out = np.empty((count, cfg.embedding_size), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    batches = -(-count // B)
    it = _InOrder(dataset, B, lo, lo + count, threads=cfg.data_threads, max_bad_fraction=cfg.max_bad_fraction)
    try:
        bar = tqdm(total=batches, desc="imprinting: embedding the training images", unit="batch", leave=False,
                   disable=comm.rank != 0, file=sys.stderr, mininterval=1.0)
        for b in range(batches):
            images, y = next(it)
            mod.forward(mx.io.DataBatch([mx.nd.array(images, ctx=ctx)]), is_train=False)
            f = mod.get_outputs()[0].asnumpy()
            n = min(B, count - b * B)
            f = f[:n] / np.maximum(np.linalg.norm(f[:n], axis=1, keepdims=True), np.float32(1e-12))
            out[b * B:b * B + n], labels[b * B:b * B + n] = f, y[:n]
            bar.update()
        bar.close()
    finally:
        it.close()
    return out, labels


def imprinted_bank(cfg: Config, comm, mod, dataset, num_classes: int, ctx) -> tuple[MemoryBank, dict]:
    """This rank's fresh shard (from the seed, as a random start's) with every class that has images imprinted,
    and what config.json records: images embedded and classes imprinted over all ranks."""
    start, count = shard_range(num_classes, comm.size, comm.rank)
    bank = MemoryBank.create(count, cfg.embedding_size, seed=cfg.seed, rank=comm.rank, ctx=ctx,
                             storage=cfg.memory_bank, momentum=cfg.momentum, wd=cfg.weight_decay,
                             dtype=cfg.bank_dtype)
    embeddings, labels = embed_part(mod, dataset, comm, cfg, ctx)
    bar = tqdm(desc="imprinting: class sums to their ranks", unit="round", leave=False, disable=comm.rank != 0,
               file=sys.stderr, mininterval=1.0)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    filled = imprint.imprint(bank, comm, num_classes, embeddings, labels, progress=progress)
    bar.close()
    totals = comm.allreduce(mx.nd.array([filled, len(labels)], dtype=np.float64), "sum", "pfc.imprint_done")
    classes, images = (int(v) for v in totals.asnumpy())
    return bank, {"classes": classes, "of": num_classes, "images": images}
