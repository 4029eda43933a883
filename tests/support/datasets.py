"""Small RecordIO datasets written by the tests, whose images say which record they are."""
import os

import cv2
import numpy as np

from partial_fc.data.records import RecordWriter, pack_image


def marked_png(i: int, size=(8, 8)) -> bytes:
    """A lossless image that says which record it is: after BGR->RGB, channel 2 (blue) holds i % 256,
    channel 1 holds i // 256, and channel 0 (red) is 255 in the rightmost column only (shows a flip)."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0], img[:, :, 1] = i % 256, i // 256
    img[:, w - 1, 2] = 255
    return cv2.imencode(".png", img)[1].tobytes()


def marker(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(record number, flipped) of each image of a batch of marked_png images."""
    number = images[:, 2, 0, 0].astype(int) + 256 * images[:, 1, 0, 0].astype(int)
    return number, images[:, 0, 0, 0] == 255


def write_rec(folder, payloads, labels, insightface=True, first_key=0, num_classes=None, size=(8, 8)):
    """A dataset with our writer. insightface: header at key 0, images 1.., one identity record per class
    (images must be grouped by class); else every key an image, from first_key."""
    os.makedirs(folder, exist_ok=True)
    with RecordWriter(os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx")) as w:
        if insightface:
            end = 1 + len(payloads)
            classes = sorted(set(labels))
            w.write(0, pack_image([end, end + len(classes)], b""))
        for i, (data, label) in enumerate(zip(payloads, labels)):
            w.write((1 if insightface else first_key) + i, pack_image(label, data))
        if insightface:
            for j, c in enumerate(classes):
                keys = [1 + i for i, lab in enumerate(labels) if lab == c]
                w.write(end + j, pack_image([keys[0], keys[-1] + 1], b""))
    if num_classes is not None:
        with open(os.path.join(folder, "property"), "w") as f:
            f.write(f"{num_classes},{size[0]},{size[1]}\n")
    return str(folder)


def marked_dataset(folder, n=72, classes=6, **kw):
    labels = [i * classes // n for i in range(n)]
    return write_rec(folder, [marked_png(i) for i in range(n)], labels, num_classes=classes, **kw)
