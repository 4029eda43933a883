"""MXNet RecordIO (`.rec` + `.idx`) without MXNet: a thread-safe reader, a writer, and the image layouts.

File format, as MXNet's dmlc-core writes it (little-endian):

    record   := part+                      one logical record is one or more parts
    part     := magic u32 (0xced7230a) | lrec u32 | data[length] | zero padding to a multiple of 4
    lrec     := cflag << 29 | length       cflag 0: whole record; 1 first, 2 middle, 3 last part
    .idx     := one line per record: key TAB byte offset of its first part in the .rec

The writer splits a record wherever the magic word occurs at a 4-byte aligned position of its data (so a
reader can always resynchronise on the magic); the parts are joined back with the magic word between them.

An image record's data is a header, struct '<IfQQ' (flag u32, label f32, id u64, id2 u64), then, when
flag > 0, `flag` float32 labels (the header's own label field is then unused), then the encoded image.

Two layouts of a dataset's keys:

* insightface: key 0 holds a header record with no image and labels (a, b): the image records are keys
  1 .. a-1 and the identity records keys a .. b-1, each identity record's labels the (start, end) range of
  its image keys. Readers find key 0 through the .idx, wherever it lies in the .rec (insightface's
  dataset_merge.py writes it last, face2rec2.py between the images and the identity records).
* im2rec: every key is an image; the keys follow the `.lst` ids and need not start at 0 (insightface
  0.7.3's RecBuilder writes this too, keys from 0).

For a vector label the class is the first component.

The reader uses os.pread on one descriptor, so any number of threads may read at once (MXNet's
MXIndexedRecordIO seeks a shared handle and is not thread-safe). FaceRecWriter writes either layout.
"""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART = struct.Struct("<II")          # magic, lrec
_IMAGE_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
_LENGTH_MASK = (1 << 29) - 1
# Enough bytes to hold a part header, an image header and a few vector labels in one read.
_HEADER_PEEK = _PART.size + _IMAGE_HEADER.size + 4 * 8
_MAX_SPAN = 1 << 22


class DataError(UserError, ValueError):
    """Bad input data. The message is one line naming the file and the problem."""


@dataclass(frozen=True)
class ImageHeader:
    """The header of an image record. labels: float32 [n] (n = 1 for a scalar label, else flag)."""
    flag: int
    labels: np.ndarray
    id: int
    id2: int

    @property
    def label(self) -> float:
        """The class as stored: the scalar label, or the first component of a vector label."""
        return float(self.labels[0])


def unpack_image(record: bytes) -> tuple[ImageHeader, bytes]:
    """Split an image record into its header and the encoded image. ValueError when it is too short."""
    if len(record) < _IMAGE_HEADER.size:
        raise ValueError(f"record of {len(record)} bytes is shorter than an image header ({_IMAGE_HEADER.size})")
    flag, label, id_, id2 = _IMAGE_HEADER.unpack_from(record)
    pos = _IMAGE_HEADER.size
    if flag > 0:
        end = pos + 4 * flag
        if len(record) < end:
            raise ValueError(f"record of {len(record)} bytes cannot hold its {flag} labels")
        labels = np.frombuffer(record, dtype="<f4", count=flag, offset=pos).astype(np.float32)
        pos = end
    else:
        labels = np.array([label], dtype=np.float32)
    return ImageHeader(flag, labels, id_, id2), bytes(record[pos:])


def pack_image(label, image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """An image record: a scalar label goes in the header, a sequence of labels after it (flag = count)."""
    if np.ndim(label) == 0:
        return _IMAGE_HEADER.pack(0, float(label), id, id2) + image
    labels = np.asarray(label, dtype="<f4").ravel()
    return _IMAGE_HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + image


def _parse_idx(idx_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) int64 in file order."""
    try:
        with open(idx_path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{idx_path}: missing") from None
    except OSError as e:
        raise DataError(f"{idx_path}: unreadable ({e.strerror})") from None
    lines = text.count(b"\n") + (0 if text.endswith(b"\n") or not text else 1)
    with warnings.catch_warnings():
        # numpy warns (rather than raises) when the text stops parsing early; treat that as malformed.
        warnings.simplefilter("error")
        try:
            numbers = np.fromstring(text.decode("ascii"), dtype=np.int64, sep=" ")
        except (DeprecationWarning, ValueError, UnicodeDecodeError):
            numbers = None
    if numbers is None or numbers.size != 2 * lines:
        # Slow path: blank lines, or a malformed line to name.
        pairs = []
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                pairs.append((int(fields[0]), int(fields[1])))
                if len(fields) != 2:
                    raise ValueError
            except (ValueError, IndexError):
                text = line[:60].decode(errors="replace")
                raise DataError(f"{idx_path}: line {n} is not 'key<TAB>offset': {text!r}") from None
        numbers = np.array(pairs, dtype=np.int64).reshape(-1)
    if numbers.size == 0:
        raise DataError(f"{idx_path}: empty (no records)")
    keys, offsets = numbers[0::2].copy(), numbers[1::2].copy()
    return keys, offsets


class RecordReader:
    """Random access to the records of a `.rec` through its `.idx`.

    keys:    int64 [n], sorted.
    offsets: int64 [n], the byte offset of each key's record.
    """

    def __init__(self, rec_path: str, idx_path: str, *, check_end: bool = True):
        """check_end=False skips the check that the last record ends the file (check-data counts it)."""
        self.rec_path, self.idx_path = rec_path, idx_path
        keys, offsets = _parse_idx(idx_path)
        try:
            self._fd = os.open(rec_path, os.O_RDONLY)
        except FileNotFoundError:
            raise DataError(f"{rec_path}: missing") from None
        except OSError as e:
            raise DataError(f"{rec_path}: unreadable ({e.strerror})") from None
        self.size = os.fstat(self._fd).st_size
        order = np.argsort(keys, kind="stable")
        self.keys, self.offsets = keys[order], offsets[order]
        dup = np.flatnonzero(self.keys[1:] == self.keys[:-1])
        if dup.size:
            self.close()
            raise DataError(f"{idx_path}: key {self.keys[dup[0]]} appears more than once")
        late = np.flatnonzero((self.offsets >= self.size) | (self.offsets < 0))
        if late.size:
            i = late[0]
            self.close()
            raise DataError(f"{idx_path}: offset {self.offsets[i]} of key {self.keys[i]} is past the end of "
                            f"{rec_path} ({self.size} bytes)")
        try:
            if check_end:
                self._check_last_record_ends_the_file()
        except BaseException:
            self.close()
            raise
        # Where the next record starts: a good guess of how many bytes to read in one pread.
        starts = np.unique(np.append(self.offsets, self.size))
        self.spans = starts[np.searchsorted(starts, self.offsets, side="right")] - self.offsets
        np.minimum(self.spans, _MAX_SPAN, out=self.spans)  # a sparse idx must not make one read huge

    def __len__(self) -> int:
        return int(self.keys.size)

    def _check_last_record_ends_the_file(self) -> None:
        """A .rec cut short inside its last record (an interrupted copy) keeps every idx offset inside the
        file, so only the last record shows it: its parts must end exactly where the file ends. A few
        preads at start-up, instead of a bad record found days into a run (or never, if it is skipped)."""
        i = int(np.argmax(self.offsets))
        key = int(self.keys[i])
        end = self.record_end(int(self.offsets[i]), key, f", the last in {self.idx_path}")
        if end != self.size:
            raise DataError(f"{self.rec_path}: trailing bytes after the last record (record key {key}, the last "
                            f"in {self.idx_path}): it ends at byte {end}, the file at {self.size} (an incomplete "
                            f"copy? compare its size or md5)")

    def record_end(self, offset: int, key=None, where: str = "") -> int:
        """The byte after the record starting at `offset`: its last part and that part's padding, read from
        the part headers alone. DataError when the record runs past the end of the file."""
        pos = offset
        while True:
            head = os.pread(self._fd, _PART.size, pos)
            if len(head) < _PART.size:  # the file ends inside a part's header
                magic, lrec, end = MAGIC, 0, pos + _PART.size
            else:
                magic, lrec = _PART.unpack(head)
                end = pos + _PART.size + ((lrec & _LENGTH_MASK) + 3 & ~3)
            if magic != MAGIC:
                raise DataError(f"{self.rec_path}: magic mismatch at offset {pos}{self._of(key)}: found "
                                f"0x{magic:08x}, expected 0x{MAGIC:08x}")
            if end > self.size or (lrec >> 29 in (1, 2) and end == self.size):  # past the end, or parts missing
                raise DataError(f"{self.rec_path}: truncated record (record key {key}{where}): it ends at byte "
                                f"{end} or later, the file at {self.size} (an incomplete copy? compare its size "
                                f"or md5)")
            if lrec >> 29 in (0, 3):  # a whole record, or its last part
                return end
            pos = end

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def position(self, key: int) -> int:
        """Index of `key` in self.keys; DataError when the idx has no such key."""
        i = int(np.searchsorted(self.keys, key))
        if i == self.keys.size or self.keys[i] != key:
            raise DataError(f"{self.idx_path}: no record with key {key}")
        return i

    def read(self, key: int) -> bytes:
        """The record stored under `key`."""
        i = self.position(key)
        return self.read_at(int(self.offsets[i]), int(self.spans[i]), key)

    def read_at(self, offset: int, span: int = _HEADER_PEEK, key=None) -> bytes:
        """The record starting at byte `offset`; `span` is a guess of its size on disk (one pread if right)."""
        buf = self._pread(offset, span, 0, key)
        pos, parts = 0, []
        while True:
            if len(buf) < pos + _PART.size:
                buf += self._pread(offset + len(buf), pos + _PART.size - len(buf), pos + _PART.size - len(buf), key)
            magic, lrec = _PART.unpack_from(buf, pos)
            if magic != MAGIC:
                raise DataError(f"{self.rec_path}: magic mismatch at offset {offset + pos}{self._of(key)}: "
                                f"found 0x{magic:08x}, expected 0x{MAGIC:08x}")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            start = pos + _PART.size
            end = start + length
            if len(buf) < end:
                buf += self._pread(offset + len(buf), end - len(buf), end - len(buf), key)
            first = not parts
            if cflag not in ((0, 1) if first else (2, 3)):
                raise DataError(f"{self.rec_path}: unexpected continuation flag {cflag} at offset {offset + pos}"
                                f"{self._of(key)}")
            parts.append(buf[start:end])
            if cflag in (0, 3):
                # The writer cut the record where the magic word was; it goes back between the parts.
                return parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)
            pos = (end + 3) & ~3

    def read_image(self, key: int) -> tuple[ImageHeader, bytes]:
        """(header, encoded image) of the image record under `key`."""
        return self._unpack(self.read(key), key)

    def read_header(self, key: int) -> ImageHeader:
        """Only the header of an image record: a short read, for scanning labels."""
        i = self.position(key)
        offset, span = int(self.offsets[i]), int(self.spans[i])
        buf = self._pread(offset, min(span, _HEADER_PEEK), 0, key)
        if len(buf) >= _PART.size + _IMAGE_HEADER.size:
            magic, lrec = _PART.unpack_from(buf)
            flag = _IMAGE_HEADER.unpack_from(buf, _PART.size)[0]
            need = _IMAGE_HEADER.size + 4 * flag
            if magic == MAGIC and lrec >> 29 == 0 and (lrec & _LENGTH_MASK) >= need \
                    and len(buf) >= _PART.size + need:
                return self._unpack(buf[_PART.size:_PART.size + need], key)[0]
        return self._unpack(self.read_at(offset, span, key), key)[0]

    def _unpack(self, record: bytes, key) -> tuple[ImageHeader, bytes]:
        try:
            return unpack_image(record)
        except ValueError as e:
            raise DataError(f"{self.rec_path}: record key {key} is not an image record ({e})") from None

    def _pread(self, offset: int, n: int, need: int, key) -> bytes:
        """n bytes at offset (fewer at the end of the file); DataError when fewer than `need` come back."""
        try:
            data = os.pread(self._fd, n, offset)
        except OSError as e:
            raise DataError(f"{self.rec_path}: unreadable at offset {offset} ({e.strerror})") from None
        if len(data) < need:
            raise DataError(f"{self.rec_path}: truncated record{self._of(key)}: needs {need} bytes at offset "
                            f"{offset}, the file ends at {self.size}")
        return data

    @staticmethod
    def _of(key) -> str:
        return "" if key is None else f" (record key {key})"


class _Committing:
    """A writer used as a context manager: close() on success (the files move into place), abort() on error."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class RecordWriter(_Committing):
    """Writes `.rec` + `.idx` under temporary names; close() moves them into place, abort() removes them."""

    def __init__(self, rec_path: str, idx_path: str):
        self.rec_path, self.idx_path = rec_path, idx_path
        suffix = f".tmp-{os.getpid()}"
        self._tmp = (rec_path + suffix, idx_path + suffix)
        self._rec = open(self._tmp[0], "wb")
        self._idx = open(self._tmp[1], "w")
        self._pos = 0

    def write(self, key: int, record: bytes):
        """Append `record` under `key` (keys are written in the order given)."""
        if len(record) > _LENGTH_MASK:
            raise ValueError(f"a record holds at most {_LENGTH_MASK} bytes, got {len(record)}")
        self._idx.write(f"{int(key)}\t{self._pos}\n")
        out, start = [], 0
        hit = record.find(_MAGIC_BYTES)
        while hit >= 0:
            if hit % 4 == 0:  # only aligned occurrences are cut (a reader resynchronises on those)
                out.append(_PART.pack(MAGIC, (1 if not out else 2) << 29 | (hit - start)) + record[start:hit])
                start = hit + 4
            hit = record.find(_MAGIC_BYTES, hit + 1)
        length = len(record) - start
        out.append(_PART.pack(MAGIC, (3 if out else 0) << 29 | length) + record[start:] + bytes(-length % 4))
        data = b"".join(out)
        self._rec.write(data)
        self._pos += len(data)

    def close(self):
        if self._rec.closed:
            return
        self._rec.close()
        self._idx.close()
        os.replace(self._tmp[0], self.rec_path)
        os.replace(self._tmp[1], self.idx_path)

    def abort(self):
        self._rec.close()
        self._idx.close()
        for path in self._tmp:
            if os.path.exists(path):
                os.remove(path)


# ---- layouts ------------------------------------------------------------------------------------------

LAYOUTS = ("insightface", "recbuilder")


class FaceRecWriter(_Committing):
    """Writes a face dataset identity by identity, in the bytes one of insightface's writers produces.

    "insightface", as its dataset tool src/data/dataset_merge.py writes it: each identity's images on
    consecutive keys from 1 (scalar label, id = key); after the last image (key a - 1) one identity record
    per identity on keys a .. b-1 (labels (first key, end key), id = key), in label order; then the header on
    key 0 (labels (a, b), id 0), last in the file. insightface's readers (FaceImageIter in arcface_mxnet and
    in the partial_fc reference, MXFaceDataset in arcface_torch) find records through the .idx by key and
    read only their labels: neither the position of key 0 in the file nor any id field is read.
    "recbuilder", as insightface 0.7.3's RecBuilder writes it: images on keys 0 .. n-1 (scalar label,
    id = key) and nothing else; the readers then take every key as an image.
    """

    def __init__(self, rec_path: str, idx_path: str, layout: str = "insightface"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        self.layout = layout
        self._writer = RecordWriter(rec_path, idx_path)
        self._next = 1 if layout == "insightface" else 0
        self._ranges: list[tuple[int, int, int]] = []   # (label, first key, end key) per identity
        self._closed = False

    def add(self, label: int, images) -> tuple[int, int]:
        """Write one identity's encoded images (an iterable of bytes); returns its (first key, end key)."""
        start = self._next
        for image in images:
            self._writer.write(self._next, pack_image(float(label), image, id=self._next))
            self._next += 1
        self._ranges.append((int(label), start, self._next))
        return start, self._next

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.layout == "insightface":
            end = self._next
            # In class order, as dataset_merge.py writes them: with classes 0..n-1, identity record j is class j
            # whatever order the identities' images were written in (pack --shuffle).
            ranges = sorted(self._ranges, key=lambda r: r[0])
            for j, (_, start, stop) in enumerate(ranges):
                self._writer.write(end + j, pack_image([start, stop], b"", id=end + j))
            self._writer.write(0, pack_image([end, end + len(ranges)], b""))
        self._writer.close()

    def abort(self):
        self._closed = True
        self._writer.abort()


@dataclass
class ImageIndex:
    """The image records of a RecordIO dataset.

    keys:   int64 [n] record keys of the images, sorted.
    labels: int64 [n] class of each image (may be negative or too large: callers validate).
    layout: "insightface" or "im2rec".
    """
    keys: np.ndarray
    labels: np.ndarray
    layout: str


def _class_of(reader: RecordReader, key: int, label: float) -> int:
    if not np.isfinite(label) or label != int(label):
        raise DataError(f"{reader.rec_path}: record key {key} has label {label}, not an integer class id")
    return int(label)


def index_images(reader: RecordReader) -> ImageIndex:
    """Find the image records and their classes in either layout (see the module docstring)."""
    keys = reader.keys
    if keys[0] == 0:
        header, image = reader.read_image(0)
        # An insightface header has labels and no image; an im2rec record 0 with a vector label has an image.
        if header.flag > 0 and not image:
            return _index_insightface(reader, header)
    labels = np.empty(keys.size, dtype=np.int64)
    for i, key in enumerate(keys.tolist()):
        labels[i] = _class_of(reader, key, reader.read_header(key).label)
    return ImageIndex(keys.copy(), labels, "im2rec")


def _index_insightface(reader: RecordReader, header: ImageHeader) -> ImageIndex:
    """Labels from the identity records: two header reads per identity, not one per image."""
    end = int(header.labels[0])
    id_end = int(header.labels[1]) if header.labels.size > 1 else end
    if end > 1 << 24:
        end = _exact_boundary(reader, end)
    keys = np.arange(1, end, dtype=np.int64)
    where = np.searchsorted(reader.keys, keys)
    present = (where < reader.keys.size) & (reader.keys[np.minimum(where, reader.keys.size - 1)] == keys)
    if not present.all():
        raise DataError(f"{reader.idx_path}: the header record says images are keys 1..{end - 1}, but key "
                        f"{keys[~present][0]} is missing")
    labels = np.zeros(keys.size, dtype=np.int64)
    known = np.zeros(keys.size, dtype=bool)
    for ordinal, id_key in enumerate(range(end, id_end)):
        try:
            ident = reader.read_image(id_key)[0]
        except DataError:
            break  # no usable identity records: every label comes from its image header below
        lo, hi = int(ident.labels[0]), int(ident.labels[-1])
        if ident.flag < 2 or not 1 <= lo < hi <= end:
            break
        first = reader.read_header(lo).label
        last = reader.read_header(hi - 1).label if hi - 1 > lo else first
        if first != last:
            continue  # mixed identity: read each image's own header below
        # Float32 labels cannot tell classes apart above 2^24; the identity's ordinal can, when it agrees.
        cls = ordinal if np.float32(ordinal) == np.float32(first) else _class_of(reader, lo, first)
        labels[lo - 1:hi - 1] = cls
        known[lo - 1:hi - 1] = True
    for i in np.flatnonzero(~known).tolist():
        key = int(keys[i])
        labels[i] = _class_of(reader, key, reader.read_header(key).label)
    return ImageIndex(keys, labels, "insightface")


def _is_identity_record(reader: RecordReader, key: int) -> bool:
    try:
        header, image = reader.read_image(key)
    except DataError:
        return False
    return header.flag >= 2 and not image


def _exact_boundary(reader: RecordReader, end: int) -> int:
    """The first identity key, when the header's float32 label rounded it (keys above 2^24, e.g. Glint360K)."""
    for key in sorted(range(end - 8, end + 9), key=lambda k: abs(k - end)):
        if _is_identity_record(reader, key) and not _is_identity_record(reader, key - 1):
            return key
    raise DataError(f"{reader.rec_path}: no identity record near key {end}, where the header record says the "
                    f"images end")
