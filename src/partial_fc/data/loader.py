"""Training data: a RecordIO face dataset, its iterator sharded by rank, and a synthetic iterator.

Every batch is a pure function of (seed, step, rank, world size): epoch e visits the images in the order of
np.random.default_rng([seed, e]).permutation(n), the same on every rank; step s of the epoch takes the
global batch at positions [s*B*W, (s+1)*B*W) of it and rank k the k-th block of B positions. The last
n mod B*W images of an epoch's order are skipped (every rank must run the same number of steps). Resuming
at step k (start_step=k) therefore yields exactly what an uninterrupted run yields from step k on.

Images come out as float32 [B, 3, H, W], RGB, 0..255: normalisation belongs to the network graph.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .records import DataError, RecordReader, index_images, unpack_image

__all__ = ["DataError", "RecDataset", "open_rec", "FaceIter", "SyntheticIter", "test_io"]

DEFAULT_IMAGE_SIZE = (112, 112)


class RecDataset:
    """The images of one RecordIO face dataset (either layout, see records.py).

    keys:        int64 [n] record keys of the images
    labels:      int64 [n] class of each image, in [0, num_classes)
    num_classes: from the `property` file when present, else max label + 1
    image_size:  (height, width) from `property`, else the size of the first decodable image (of the
                 first 16)
    """

    def __init__(self, rec_path: str, idx_path: str, property_path: str | None = None):
        self.rec_path, self.idx_path = rec_path, idx_path
        self.reader = RecordReader(rec_path, idx_path)
        try:
            index = index_images(self.reader)
            self.keys, self.labels, self.layout = index.keys, index.labels, index.layout
            if self.keys.size == 0:
                raise DataError(f"{rec_path}: holds no image records")
            where = self.reader.keys.searchsorted(self.keys)
            self._offsets, self._spans = self.reader.offsets[where], self.reader.spans[where]
            prop = _read_property(property_path) if property_path and os.path.exists(property_path) else None
            self.num_classes = prop[0] if prop else int(self.labels.max()) + 1
            self._check_labels(property_path if prop else None)
            seen = self._first_image_size(required=not prop)
            self.image_size = seen or prop[1]
            if prop:
                self._check_property(property_path, prop, seen)
                if prop[2] is not None and prop[2] != len(self.keys):
                    raise DataError(f"{property_path}: line 2 says {prop[2]} images, but {rec_path} holds "
                                    f"{len(self.keys)}")
        except BaseException:
            self.reader.close()
            raise

    def __len__(self) -> int:
        return int(self.keys.size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.reader.close()

    def read(self, i: int) -> bytes:
        """The encoded image (JPEG/PNG bytes) of the i-th image. Thread-safe."""
        key = int(self.keys[i])
        record = self.reader.read_at(int(self._offsets[i]), int(self._spans[i]), key)
        try:
            return unpack_image(record)[1]
        except ValueError as e:
            raise DataError(f"{self.rec_path}: record key {key} is not an image record ({e})") from None

    def _check_labels(self, property_path):
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= self.num_classes))
        if bad.size:
            i = bad[0]
            why = "is negative" if self.labels[i] < 0 else \
                f"is not below num_classes={self.num_classes} given by {property_path}"
            raise DataError(f"{self.rec_path}: record key {self.keys[i]} has label {self.labels[i]}, which {why}")

    def _check_property(self, path, prop, seen):
        """The property file must describe this rec: its class count and image size, not another dataset's."""
        if seen is not None and tuple(prop[1]) != tuple(seen):
            raise DataError(f"{path}: says images are {prop[1][0]}x{prop[1][1]}, but {self.rec_path} holds "
                            f"{self.image_size[0]}x{self.image_size[1]} images")
        if self.layout == "insightface":
            header = self.reader.read_image(0)[0]
            ids = int(header.labels[1]) - int(header.labels[0]) if header.labels.size > 1 else 0
            # Above 2^24 the header's float32 labels are inexact: trust the labels then.
            exact = header.labels.size > 1 and header.labels[1] <= 1 << 24
            classes = ids if exact and ids > 0 else int(self.labels.max()) + 1
            if prop[0] != classes:
                raise DataError(f"{path}: says {prop[0]} classes, but {self.rec_path} holds {classes} identities")

    def _first_image_size(self, required: bool = True) -> tuple[int, int] | None:
        for i in range(min(len(self), 16)):
            try:
                image = _decode(self.read(i))
            except DataError:
                continue
            if image is not None:
                return image.shape[:2]
        if not required:
            return None  # the property file gives the size (bad records are the iterator's business)
        raise DataError(f"{self.rec_path}: none of the first images decodes, and there is no property file "
                        f"to give the image size")


def _read_property(path: str) -> tuple[int, tuple[int, int], int | None]:
    """(num_classes, (height, width), image count or None) from an insightface `property` file.

    Line 1 is `num_classes,height,width`. insightface's RecBuilder (0.7.3) and rec2shufrec.py write the
    number of images on a second line (rec2shufrec then a note and a date, which are ignored)."""
    try:
        with open(path) as f:
            lines = f.read().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
    first = lines[0].strip() if lines else ""
    try:
        values = [int(v) for v in first.split(",")]
        if len(values) != 3 or min(values) < 1:
            raise ValueError
    except ValueError:
        raise DataError(f"{path}: expected 'num_classes,height,width', got {first[:60]!r}") from None
    count = None
    if len(lines) > 1:
        second = lines[1].strip()
        try:
            count = int(second)
            if count < 1:
                raise ValueError
        except ValueError:
            raise DataError(f"{path}: line 2 must be the number of images (as insightface writes it), got "
                            f"{second[:60]!r}") from None
    return values[0], (values[1], values[2]), count


def open_rec(path: str) -> RecDataset:
    """A dataset from a folder holding train.rec, train.idx (and optionally property), or a `.rec` path
    (its `.idx` beside it; `property` from the same folder when present)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        rec = os.path.join(path, "train.rec")
    elif path.endswith(".rec"):
        rec = path
    else:
        raise DataError(f"{path}: neither a folder holding train.rec and train.idx nor a .rec file")
    if not os.path.exists(rec):
        raise DataError(f"{rec}: missing")
    if not os.path.isfile(rec):
        raise DataError(f"{rec}: not a regular file")
    return RecDataset(rec, rec[:-4] + ".idx", os.path.join(os.path.dirname(rec), "property"))


def _decode(data: bytes):
    """BGR uint8 [H, W, 3], or None when the bytes are not a decodable image."""
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # raised for an empty buffer; other garbage gives None
        return None


_OK, _BAD, _WRONG_SIZE = 0, 1, 2


class FaceIter:
    """Endless iterator over (images float32 [B,3,H,W] RGB 0..255, labels int64 [B]) for one rank.

    Decoding runs in `threads` threads with `prefetch` batches in flight. A record that fails to read or
    decode is replaced by the next good sample of its batch (deterministic) and counted in `bad_records`;
    when the bad ones exceed `max_bad_fraction` of max(images read, ALLOWANCE_READS) the iterator raises
    DataError (at the first bad one when the fraction is 0): early in a run a handful of bad records is
    tolerated rather than judged on a tiny sample, and later the fraction itself rules. An image of another size than the
    dataset's raises DataError at once.
    """

    ALLOWANCE_READS = 10_000  # with the default fraction 0.001: up to 10 bad records before 10,000 reads

    def __init__(self, dataset: RecDataset, batch_size: int, rank: int, world_size: int, seed: int = 0,
                 start_step: int = 0, flip: bool = True, threads: int = 2, prefetch: int = 4,
                 max_bad_fraction: float = 0.001):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, "
                             f"{world_size}")
        if seed < 0 or start_step < 0 or threads < 1 or prefetch < 1 or not 0 <= max_bad_fraction <= 1:
            raise ValueError("seed and start_step must be >= 0, threads and prefetch >= 1, "
                             "max_bad_fraction in [0, 1]")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.seed, self.flip, self.max_bad_fraction = seed, flip, max_bad_fraction
        self.steps_per_epoch = len(dataset) // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise DataError(f"{dataset.rec_path}: {len(dataset)} images are fewer than one global batch of "
                            f"{batch_size * world_size} ({world_size} ranks x {batch_size})")
        self.step = start_step  # the step of the next batch returned
        self.images_read = 0
        self.bad_records = 0
        self.first_bad = None   # (key, reason) of the first bad record, for the error message
        self._bad_reported = 0  # bad_records at the last unreported_bad_records() that returned it
        self._orders = {}       # epoch -> (permutation, flips); at most two epochs kept
        self._pending = deque()
        self._next_submit = start_step
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="face-iter")
        for _ in range(prefetch):
            self._submit()

    # ---- the order: pure functions of (seed, step, rank, world size) ----

    def _order(self, epoch: int):
        if epoch not in self._orders:
            n = len(self.dataset)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            flips = np.random.default_rng([self.seed, epoch, 1]).integers(0, 2, size=n, dtype=np.uint8)
            self._orders = {e: v for e, v in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = (perm, flips.astype(bool))
        return self._orders[epoch]

    def positions(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(image indices int64 [B], horizontal flip bool [B]) this rank reads at global step `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm, flips = self._order(epoch)
        start = (within * self.world_size + self.rank) * self.batch_size
        pos = slice(start, start + self.batch_size)
        return perm[pos].astype(np.int64), (flips[pos] if self.flip else np.zeros(self.batch_size, bool))

    @property
    def epoch(self) -> int:
        """The epoch of the next batch returned."""
        return self.step // self.steps_per_epoch

    # ---- decoding ----

    def _submit(self):
        step = self._next_submit
        self._next_submit += 1
        index, flips = self.positions(step)
        h, w = self.dataset.image_size
        images = np.empty((self.batch_size, 3, h, w), dtype=np.float32)
        status = np.zeros(self.batch_size, dtype=np.int8)
        notes = [None] * self.batch_size
        bounds = np.linspace(0, self.batch_size, min(self._threads, self.batch_size) + 1).astype(int)
        futures = [self._pool.submit(self._decode_range, index, flips, images, status, notes, lo, hi)
                   for lo, hi in zip(bounds[:-1], bounds[1:])]
        self._pending.append((step, index, images, status, notes, futures))

    def _decode_range(self, index, flips, images, status, notes, lo, hi):
        size = tuple(self.dataset.image_size)
        for j in range(lo, hi):
            try:
                image = _decode(self.dataset.read(int(index[j])))
            except DataError as e:
                status[j], notes[j] = _BAD, str(e)
                continue
            if image is None:
                status[j], notes[j] = _BAD, "does not decode as an image"
            elif image.shape[:2] != size:
                status[j], notes[j] = _WRONG_SIZE, f"{image.shape[0]}x{image.shape[1]}"
            else:
                if flips[j]:
                    image = image[:, ::-1]
                # BGR HWC -> RGB CHW, cast to float32 in the same copy.
                np.copyto(images[j], image.transpose(2, 0, 1)[::-1])

    def __iter__(self):
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pool is None:
            raise RuntimeError("FaceIter is closed")
        step, index, images, status, notes, futures = self._pending.popleft()
        self._submit()  # keep the pipeline full while this batch finishes
        for f in futures:
            f.result()
        ds = self.dataset
        labels = ds.labels[index]
        wrong = np.flatnonzero(status == _WRONG_SIZE)
        if wrong.size:
            j = wrong[0]
            raise DataError(f"{ds.rec_path}: record key {ds.keys[index[j]]} decodes to {notes[j]}, not the "
                            f"dataset's image size {ds.image_size[0]}x{ds.image_size[1]}")
        bad = np.flatnonzero(status == _BAD)
        self.images_read += self.batch_size
        if bad.size:
            self.bad_records += bad.size
            if self.first_bad is None:
                self.first_bad = (int(ds.keys[index[bad[0]]]), notes[bad[0]])
            good = np.flatnonzero(status == _OK)
            if good.size == 0:
                raise DataError(f"{ds.rec_path}: no image of step {step} on rank {self.rank} decodes "
                                f"({self.first_bad_text()})")
            # Each bad sample takes the next good sample of the batch (cyclically), image and label.
            src = good[np.searchsorted(good, bad) % good.size]
            images[bad], labels[bad] = images[src], labels[src]
            too_many = self.bad_records > self.max_bad_fraction * max(self.images_read, self.ALLOWANCE_READS)
            if too_many:
                raise DataError(f"{ds.rec_path}: {self.bad_records} of {self.images_read} images read failed to "
                                f"decode, more than max_bad_fraction={self.max_bad_fraction} "
                                f"({self.first_bad_text()})")
        self.step = step + 1
        return images, labels

    def first_bad_text(self) -> str:
        key, reason = self.first_bad
        return f"first: record key {key}: {reason}"

    def unreported_bad_records(self) -> int:
        """bad_records when it grew since the last call, else 0: a caller warns once per growth, not per batch."""
        if self.bad_records <= self._bad_reported:
            return 0
        self._bad_reported = self.bad_records
        return self.bad_records

    def close(self, wait: bool = True):
        """Stop the decoding threads (pending batches are dropped)."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            for *_, futures in self._pending:
                for f in futures:
                    f.cancel()
            self._pending.clear()
            pool.shutdown(wait=wait)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close(wait=False)
        except Exception:
            pass


class SyntheticIter:
    """Endless iterator of random (images float32 [B,3,H,W] 0..255, labels int64 [B]) for benchmarks.

    identities = 0: labels uniform over num_classes and images unrelated to them (the cost of a step, with
    every step's classes new: nothing to learn). Images are read-only views into a pool generated once
    (copying nothing per step, so it is never the bottleneck); the pool offset and the labels are drawn from
    np.random.default_rng([seed, step, rank]).
    identities = K > 0: labels drawn from K class ids spread evenly over [0, num_classes) (so every rank's
    shard holds some), each with its own fixed random face, identical on every rank: a learnable stream
    whose loss falls at any class count, as a real dataset's would (its identities recur every epoch). Each
    draw is that face plus pixel noise of at most IDENTITY_NOISE levels, so two images are never equal: a
    rank whose batch held one face twice would otherwise give the embedding's BatchNorm identical rows, whose
    output is its beta (zero at the start) for both, and a zero embedding has no direction (the loss is nan;
    at 64 ranks of 2 images and 16 identities almost every start hit it).
    """

    POOL_EXTRA = 64
    IDENTITY_NOISE = 8

    def __init__(self, batch_size: int, num_classes: int, rank: int, world_size: int, seed: int = 0,
                 start_step: int = 0, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, identities: int = 0):
        if batch_size < 1 or num_classes < 1 or not 0 <= rank < world_size or seed < 0 or start_step < 0 \
                or not 0 <= identities <= num_classes:
            raise ValueError("need batch_size, num_classes >= 1, 0 <= rank < world_size, seed, start_step >= 0, "
                             "0 <= identities <= num_classes")
        self.batch_size, self.num_classes, self.rank, self.world_size = batch_size, num_classes, rank, world_size
        self.seed, self.step, self.image_size, self.identities = seed, start_step, tuple(image_size), identities
        h, w = self.image_size
        if identities:
            self._ids = np.arange(identities, dtype=np.int64) * num_classes // identities
            pool_rng = np.random.default_rng([seed, 0x1D5])  # the same faces on every rank
            size = identities
        else:
            pool_rng = np.random.default_rng([seed, rank, 0x5EED])
            size = batch_size + self.POOL_EXTRA
        self._pool = pool_rng.integers(0, 256, size=(size, 3, h, w), dtype=np.uint8).astype(np.float32)
        self._pool.flags.writeable = False

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of global step `step` on this rank."""
        rng = np.random.default_rng([self.seed, step, self.rank])
        if self.identities:
            which = rng.integers(0, self.identities, size=self.batch_size)
            noise = rng.integers(-self.IDENTITY_NOISE, self.IDENTITY_NOISE + 1,
                                 size=(self.batch_size,) + self._pool.shape[1:], dtype=np.int16)
            return np.clip(self._pool[which] + noise, 0, 255, dtype=np.float32), self._ids[which]
        offset = int(rng.integers(0, self.POOL_EXTRA + 1))
        labels = rng.integers(0, self.num_classes, size=self.batch_size, dtype=np.int64)
        return self._pool[offset:offset + self.batch_size], labels

    def __iter__(self):
        return self

    def __next__(self):
        out = self.batch(self.step)
        self.step += 1
        return out

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_io(dataset: RecDataset, batch_size: int, threads: int, batches: int, seed: int = 0) -> dict:
    """Decoding throughput of FaceIter on this machine: one warm-up batch, then `batches` timed ones."""
    with FaceIter(dataset, batch_size, 0, 1, seed=seed, threads=threads, prefetch=max(2, 2 * threads),
                  max_bad_fraction=1.0) as it:
        next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - t0
        bad = it.bad_records
    return {"images_per_s": batches * batch_size / seconds, "seconds": seconds, "batches": batches,
            "batch_size": batch_size, "threads": threads, "bad_records": bad}


test_io.__test__ = False  # not a pytest test, despite the name
