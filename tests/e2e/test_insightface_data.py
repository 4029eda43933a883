"""Training on a dataset written by insightface's own tool: 0.7.3's RecBuilder (images on keys 0.., no header
record, and a `property` of two lines, `classes,112,112` then the image count)."""
import json
import pickle

import numpy as np
import pytest

from partial_fc import checkpoint
from partial_fc.data.loader import DataError, open_rec
from support import trainer_cases as cases

CLASSES, PER_CLASS = 5, 4


@pytest.fixture(scope="module")
def recbuilder_data(tmp_path_factory):
    from insightface.data.rec_builder import RecBuilder

    folder = tmp_path_factory.mktemp("insightface") / "data"
    rng = np.random.default_rng(0)
    builder = RecBuilder(str(folder))  # makes the folder
    for _ in range(CLASSES):
        # BGR uint8 images, as its docstring asks; it encodes them as JPEG (quality 95) itself.
        builder.add([rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(PER_CLASS)])
    builder.close()
    builder.writer.close()  # RecBuilder.close() leaves its writer open (flushed when the process exits)
    return folder


def test_recbuilder_output_has_a_two_line_property_and_no_header(recbuilder_data):
    assert (recbuilder_data / "property").read_text() == f"{CLASSES},112,112\n{CLASSES * PER_CLASS}\n"
    with open_rec(str(recbuilder_data)) as ds:
        assert ds.layout == "im2rec" and ds.keys.tolist() == list(range(CLASSES * PER_CLASS))
        assert ds.labels.tolist() == [c for c in range(CLASSES) for _ in range(PER_CLASS)]
        assert (ds.num_classes, ds.image_size) == (CLASSES, (112, 112))


def test_a_recbuilder_dataset_trains_and_verifies_on_a_bin_of_uint8_arrays(recbuilder_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(recbuilder_data, data)
    with open_rec(str(data)) as ds:
        images = [ds.read(i) for i in range(len(ds))]
    # 10 pairs of the dataset's images, stored as bytes and, the same pairs, as uint8 arrays ((n, 1), as
    # cv2.imencode gave them in older OpenCV; insightface's loaders decode both).
    pairs = [(i, i + 1) for i in range(0, 10)] + [(i, i + PER_CLASS) for i in range(0, 10)]
    flat = [images[k] for pair in pairs for k in pair]
    issame = [k // PER_CLASS == j // PER_CLASS for k, j in pairs]
    (data / "as_bytes.bin").write_bytes(pickle.dumps((flat, issame), protocol=4))
    arrays = [np.frombuffer(b, dtype=np.uint8).reshape(-1, 1) for b in flat]
    (data / "as_arrays.bin").write_bytes(pickle.dumps((arrays, np.array(issame)), protocol=2))
    out = tmp_path / "run"
    losses = cases.run(out, 2, comm="local", data_dir=str(data), num_classes=0, data_threads=1)
    assert len(losses) == 2 and all(np.isfinite(losses))
    meta = json.loads(open(checkpoint.latest(str(out))).read())
    assert meta["num_classes"] == CLASSES  # from the property's first line
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for metric in ("accuracy", "xnorm"):
        assert logged[f"val/as_arrays/{metric}"] == logged[f"val/as_bytes/{metric}"]


def test_a_property_whose_image_count_disagrees_stops_training(recbuilder_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(recbuilder_data, data)
    (data / "property").write_text(f"{CLASSES},112,112\n{CLASSES * PER_CLASS + 1}\n")
    with pytest.raises(DataError, match=rf"property: line 2 says {CLASSES * PER_CLASS + 1} images, but "
                                        rf".*train\.rec holds {CLASSES * PER_CLASS}"):
        cases.run(tmp_path / "run", 1, comm="local", data_dir=str(data), num_classes=0, data_threads=1)
