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


def test_poly_decay_closed_form():
    from partial_fc.training.schedule import poly_learning_rate
    # No warmup, total 10, power 2: base * (1 - s / 10)^2.
    got = [poly_learning_rate(s, 0.4, 10, power=2.0) for s in (0, 1, 5, 9, 10, 12)]
    assert got == pytest.approx([0.4, 0.4 * 0.81, 0.4 * 0.25, 0.4 * 0.01, 0.0, 0.0])
    # Power 1 is a straight line to zero.
    assert [poly_learning_rate(s, 1.0, 4, power=1.0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_poly_decay_after_linear_warmup():
    from partial_fc.training.schedule import poly_learning_rate
    # Warmup 4 of 12: (s + 1) / 4 ramps; then (1 - (s - 4) / 8)^2.
    lrs = [poly_learning_rate(s, 2.0, 12, warmup_steps=4, power=2.0) for s in range(12)]
    expected = [2.0 * (s + 1) / 4 for s in range(4)] + [2.0 * (1 - (s - 4) / 8) ** 2 for s in range(4, 12)]
    assert lrs == pytest.approx(expected)
    assert lrs[3] == lrs[4] == pytest.approx(2.0) and lrs[-1] > 0


def test_the_config_picks_the_schedule():
    from partial_fc import config
    from partial_fc.training.schedule import scheduled
    step = config.load({}, lr_steps="3", max_steps=8)
    poly = config.load({}, lr_schedule="poly", lr_power=1.0, max_steps=8, warmup_steps=2)
    assert [scheduled(step, s, 1.0) for s in (2, 3)] == pytest.approx([1.0, 0.1])
    assert [scheduled(poly, s, 1.0) for s in (0, 1, 2, 5)] == pytest.approx([0.5, 1.0, 1.0, 0.5])
    with pytest.raises(config.ConfigError, match="PFC_LR_SCHEDULE"):
        config.load({"PFC_LR_SCHEDULE": "cosine"})
