import pytest

from partial_fc.training.schedule import learning_rate, scaled_base


def test_step_decay_closed_form():
    steps = [10, 20]
    assert [learning_rate(s, 0.1, steps) for s in (0, 9, 10, 19, 20, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_linear_warmup_then_decay():
    lrs = [learning_rate(s, 1.0, [6], warmup_steps=4) for s in range(8)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.1])


def test_linear_scaling_rule():
    assert scaled_base(0.1, 512) == pytest.approx(0.1)
    assert scaled_base(0.1, 64) == pytest.approx(0.0125)
