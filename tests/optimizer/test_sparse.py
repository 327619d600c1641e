"""Sparse (tf.IndexedSlices) updates equal the dense update of the densified
gradient, and touch sum/count only on the given rows."""

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad
from expectigrad_tf.reference import ExpectigradNumpy


def _indexed_slices(rng, rows, cols, dtype, with_duplicates=True):
    idx = rng.choice(rows, size=4, replace=False)
    if with_duplicates:
        idx = np.concatenate([idx, idx[:2]])  # duplicated rows must be summed
    vals = rng.standard_normal((idx.size, cols)).astype(dtype)
    vals[0, 0] = 0.0  # an exact zero inside a touched row
    return tf.IndexedSlices(tf.constant(vals), tf.constant(idx, tf.int64), tf.constant([rows, cols], tf.int64))


@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("beta,sparse_counter", [(0.0, True), (0.9, True), (0.0, False), (0.9, False)])
def test_sparse_equals_dense(dtype, rtol, beta, sparse_counter):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((10, 3)).astype(dtype)
    v_sparse, v_dense = tf.Variable(x0), tf.Variable(x0)
    kw = dict(learning_rate=0.05, beta=beta, sparse_counter=sparse_counter)
    o_sparse, o_dense = Expectigrad(**kw), Expectigrad(**kw)
    ref = ExpectigradNumpy(x0.astype(np.float64), lr=float(np.float32(0.05)), beta=beta,
                           sparse_counter=sparse_counter)
    touched = np.zeros(10, bool)
    for _ in range(6):
        g = _indexed_slices(rng, 10, 3, dtype)
        touched[g.indices.numpy()] = True
        o_sparse.apply([g], [v_sparse])
        dense_g = tf.convert_to_tensor(g)
        o_dense.apply([dense_g], [v_dense])
        ref.step(dense_g.numpy().astype(np.float64))
    assert o_sparse.dispatch_report()[v_sparse.path if hasattr(v_sparse, "path") else v_sparse.name][0] == "sparse"
    np.testing.assert_allclose(v_sparse.numpy(), v_dense.numpy(), rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(v_sparse.numpy(), ref.x, rtol=max(rtol, 1e-5) if dtype == "float32" else 1e-10)
    s_sp, n_sp, m_sp = o_sparse._slots_for(v_sparse)
    s_de, n_de, m_de = o_dense._slots_for(v_dense)
    np.testing.assert_allclose(s_sp.numpy(), s_de.numpy(), rtol=rtol)
    # Rows never given keep sum (and count) exactly zero.
    assert np.all(s_sp.numpy()[~touched] == 0)
    if sparse_counter:
        np.testing.assert_array_equal(n_sp.numpy(), n_de.numpy())
        assert np.all(n_sp.numpy()[~touched] == 0)
    if beta > 0:
        np.testing.assert_allclose(m_sp.numpy(), m_de.numpy(), rtol=rtol, atol=1e-12)


def test_embedding_model_takes_sparse_path():
    import keras

    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(50, 8),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    opt = Expectigrad(learning_rate=0.01)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.randint(0, 50, (64, 4))
    y = np.random.randn(64, 1).astype("float32")
    model.fit(x, y, epochs=1, verbose=0)
    paths = {p for p, _ in opt.dispatch_report().values()}
    assert paths == {"sparse", "fused"}
