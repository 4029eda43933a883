"""Small trainer runs shared by the single and parallel tiers: tiny settings that still exercise everything."""
from partial_fc import config
from partial_fc.training import trainer as train

TINY = dict(dataset="synthetic", num_classes=37, network="mbf", embedding_size=16, batch_size=4,
            sample_rate=0.3, lr=0.5, memory_bank_lr=0.5, frequent=2, verbose=1000, tensorboard=False)


def run(output, max_steps, **overrides):
    cfg = config.load({}, **dict(TINY, output=str(output), max_steps=max_steps, **overrides))
    return train.train(cfg)


def check_exact_resume(out_full, out_split, stop=3, total=6, rtol=0.0, **overrides):
    """Run `total` steps straight; run `stop` steps, then resume to `total`; the losses after `stop` match
    (bit for bit with rtol=0)."""
    import numpy as np

    full = run(out_full, total, checkpoint_steps=stop, **overrides)
    first = run(out_split, stop, checkpoint_steps=stop, **overrides)
    rest = run(out_split, total, checkpoint_steps=stop, resume="1", **overrides)
    assert len(full) == total and len(first) == stop and len(rest) == total - stop
    np.testing.assert_allclose(first, full[:stop], rtol=rtol, atol=0)
    np.testing.assert_allclose(rest, full[stop:], rtol=rtol, atol=0)
    return full, rest
