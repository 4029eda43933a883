import numpy as np

from partial_fc import config
from partial_fc.training import demo


def test_head_alone_learns_synthetic_identities():
    cfg = config.load({}, dataset="synthetic", num_classes=200, embedding_size=32, batch_size=32,
                      sample_rate=0.2, comm="local")
    losses = demo.train_head(cfg, steps=80)
    assert len(losses) == 80 and np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
