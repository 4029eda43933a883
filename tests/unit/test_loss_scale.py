from partial_fc.training.loss_scale import LossScaler


def test_overflow_halves_and_skips_then_good_steps_double():
    s = LossScaler(scale=1024.0, window=3)
    assert s.update(overflow=True) is False and s.scale == 512.0 and s.skipped == 1
    assert [s.update(False) for _ in range(3)] == [True, True, True]
    assert s.scale == 1024.0 and s.good_steps == 0
    s.update(False)
    s.update(True)          # an overflow resets the run of good steps
    assert s.scale == 512.0 and s.good_steps == 0


def test_bounds_and_state_round_trip():
    s = LossScaler(scale=2.0, window=1, min_scale=1.0, max_scale=4.0)
    for _ in range(5):
        s.update(True)
    assert s.scale == 1.0
    for _ in range(5):
        s.update(False)
    assert s.scale == 4.0
    assert LossScaler(**s.state()) == s


def test_overflow_detection_sees_inf_and_nan_in_any_gradient():
    import mxnet as mx
    import numpy as np
    from partial_fc import dist
    from partial_fc.training import trainer as train

    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=3, flatten=True, name="fc")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (2, 4))], for_training=True)
    mod.init_params(mx.init.Xavier())
    comm = dist.LocalComm()
    mod.forward(mx.io.DataBatch([mx.nd.ones((2, 4))]), is_train=True)
    mod.backward(out_grads=[mx.nd.ones((2, 3))])
    assert train.gradients_overflow(mod, comm) is False
    for bad in (np.inf, np.nan):
        g = mod._exec_group.grad_arrays[1][0]          # fc_bias
        g[:] = np.array([1.0, bad, 2.0], np.float32)
        assert train.gradients_overflow(mod, comm) is True
