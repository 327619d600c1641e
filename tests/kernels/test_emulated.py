"""The CUDA kernel's own source on the CPU: csrc/cuda/expectigrad_kernel.cu
(the real file) and its launcher compiled as C++ with
csrc/cuda/emulation/cuda_emulation.h into ``_harness_emulated``, against the
NumPy reference ``expectigrad_tf.reference.ExpectigradNumpy``.

The emulated launch runs every block and thread of the grid one after
another, with lr and step read from "device" memory as the kernel does. This
checks the kernel's indexing and chunking (grid-stride loop, the tensor
cursor, several launches for more than 40 tensors, empty tensors, sizes that
are not a multiple of the block, grids smaller than the data, misaligned
views), the device-side step scalars (lr as float32 or float64, bias
correction) and the device-side validation of lr/step. It does not check the
GPU memory model, concurrency or the device's math library: tools/gpu_check
does, on a GPU.

Tolerances: float32/float64 against a reference run in the same precision
(the same operations, rounded alike); float16/bfloat16 against a float32
reference whose variable and momentum are rounded to 16 bits after each step
(as the kernel stores them), within two units in the last place.
"""

import numpy as np
import pytest

from expectigrad_tf.reference import ExpectigradNumpy

ml_dtypes = pytest.importorskip("ml_dtypes")  # bfloat16 arrays (a TensorFlow dependency)

DTYPES = ["float32", "float64", "float16", "bfloat16"]
VARIANTS = [(beta, sc) for beta in (0.0, 0.9) for sc in (True, False)]
NP = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
      "bfloat16": ml_dtypes.bfloat16}
LR, EPS = 0.05, 1e-8
THREADS, MAX_TENSORS = 256, 40
# Sizes: empty, tiny, around the block size, larger than the default grid.
SIZE_CYCLE = [0, 1, 7, 255, 256, 257, 1000, 4097, 0, 33, 513, 9000]


@pytest.fixture
def em(emulated):
    emulated.set_max_blocks(0)
    emulated.reset_stats()
    yield emulated
    emulated.set_max_blocks(0)


def _state_dtype(dtype):
    return np.float64 if dtype == "float64" else np.float32


def _ref_dtype(dtype):
    return np.float64 if dtype == "float64" else np.float32


def _round(x, dtype):
    """Values rounded to the storage dtype, in the reference's precision."""
    return np.asarray(x).astype(NP[dtype]).astype(_ref_dtype(dtype))


def _gradient(rng, size, t):
    g = rng.standard_normal(size)
    if size:
        g[(np.arange(size) + t) % 3 == 0] = 0.0  # zero on some steps
        if size >= 7:
            g[0] = 0.0  # never non-zero: count 0, 0/0 := 0
    return g


class Tensor:
    """var/sum/count/momentum/grad of one tensor; `misaligned`: every array is
    a view starting at element 1 of its buffer, with guard elements around."""

    GUARD = (-7.25, 3.5)

    def __init__(self, x0, dtype, beta, sparse, misaligned):
        self.n, self.pad = x0.size, int(misaligned)
        self.dtype = dtype
        self.bufs = {}
        self.var = self._alloc("var", NP[dtype], x0)
        self.sum = self._alloc("sum", _state_dtype(dtype), 0.0)
        self.cnt = self._alloc("cnt", _state_dtype(dtype), 0.0) if sparse else None
        self.mom = self._alloc("mom", NP[dtype], 0.0) if beta > 0 else None
        self.grad = self._alloc("grad", NP[dtype], 0.0)

    def _alloc(self, key, np_dtype, fill):
        buf = np.empty(self.n + 2 * self.pad, np_dtype)
        buf[...] = self.GUARD[0]
        if self.pad:
            buf[-1] = self.GUARD[1]
        view = buf[self.pad:self.pad + self.n]
        view[...] = fill
        self.bufs[key] = buf
        return view

    def guards_intact(self):
        if not self.pad:
            return True
        return all(float(b[0]) == self.GUARD[0] and float(b[-1]) == self.GUARD[1]
                   for b in self.bufs.values())


def _make(dtype, beta, sparse, sizes, misaligned, seed):
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    x0 = _round(rng.standard_normal(total), dtype)
    offsets = np.cumsum([0] + list(sizes))
    tensors = [Tensor(x0[offsets[i]:offsets[i + 1]], dtype, beta, sparse, misaligned[i])
               for i in range(len(sizes))]
    return rng, x0, offsets, tensors


def _apply(em, tensors, lr, beta, t, lr_dtype="float32"):
    sparse = tensors[0].cnt is not None
    mom = tensors[0].mom is not None
    em.apply([x.var for x in tensors], [x.sum for x in tensors],
             [x.cnt for x in tensors] if sparse else None,
             [x.mom for x in tensors] if mom else None,
             [x.grad for x in tensors], lr, beta, EPS, t, lr_dtype=lr_dtype)


def _flat(tensors, attr):
    return np.concatenate([getattr(x, attr).astype(np.float64) for x in tensors])


def _check(tensors, ref, dtype, beta, sparse):
    if dtype in ("float16", "bfloat16"):
        ulp = {"float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
        loose = dict(rtol=2 * ulp, atol=2 * ulp * max(1.0, float(np.max(np.abs(ref.x)))))
        state = dict(rtol=1e-6, atol=1e-7)
    elif dtype == "float32":
        loose = state = dict(rtol=1e-6, atol=1e-7)
    else:
        loose = state = dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(_flat(tensors, "var"), ref.x, **loose, err_msg="var")
    np.testing.assert_allclose(_flat(tensors, "sum"), ref.s, **state, err_msg="sum")
    if sparse:
        np.testing.assert_array_equal(_flat(tensors, "cnt"), ref.n, err_msg="count")
    if beta > 0:
        np.testing.assert_allclose(_flat(tensors, "mom"), ref.m, **loose, err_msg="momentum")
    assert all(x.guards_intact() for x in tensors), "wrote outside a misaligned view"


def _run(em, dtype, beta, sparse, sizes, misaligned, steps, seed, lr_dtype="float32",
         max_blocks=0):
    em.set_max_blocks(max_blocks)
    rng, x0, offsets, tensors = _make(dtype, beta, sparse, sizes, misaligned, seed)
    lr_seen = float(np.float32(LR)) if lr_dtype == "float32" else LR
    ref = ExpectigradNumpy(x0, lr=lr_seen, beta=beta, eps=EPS, sparse_counter=sparse,
                           dtype=_ref_dtype(dtype))
    for t in range(1, steps + 1):
        g = _round(_gradient(rng, offsets[-1], t), dtype)
        for i, x in enumerate(tensors):
            x.grad[...] = g[offsets[i]:offsets[i + 1]]
        _apply(em, tensors, LR, beta, t, lr_dtype)
        ref.step(g)
        if dtype in ("float16", "bfloat16"):  # the kernel stores them in 16 bits
            ref.x, ref.m = _round(ref.x, dtype), _round(ref.m, dtype)
    return tensors, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta,sparse", VARIANTS)
def test_many_tensors_match_reference(em, dtype, beta, sparse):
    """61 tensors (48 non-empty: two launches per step), sizes not multiples
    of 256, some empty, every third misaligned, the default grid (smaller than
    the data: 16 blocks of 256 threads over ~60K elements)."""
    sizes = [SIZE_CYCLE[i % len(SIZE_CYCLE)] for i in range(61)]
    misaligned = [i % 3 == 1 for i in range(61)]
    steps = 4
    tensors, ref = _run(em, dtype, beta, sparse, sizes, misaligned, steps, seed=len(dtype))
    _check(tensors, ref, dtype, beta, sparse)
    nonempty = sum(s > 0 for s in sizes)
    stats = em.stats()
    per_step = -(-nonempty // MAX_TENSORS)
    assert per_step >= 2 and stats["launches"] == steps * per_step, stats
    assert stats["max_grid"] * THREADS < sum(sizes[:MAX_TENSORS]), stats  # grid-stride used
    # Element 0 (of the first non-empty tensor) never had a non-zero
    # gradient: never counted (0/0 := 0), never moved.
    assert _flat(tensors, "sum")[0] == 0 and _flat(tensors, "var")[0] == ref.x[0]
    if sparse:
        assert _flat(tensors, "cnt")[0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_blocks", [1, 3])
def test_grid_smaller_than_the_data_gives_identical_results(em, dtype, max_blocks):
    """Capping the grid changes which thread updates which element, never the
    result: bit-identical to the default grid."""
    sizes = [4097, 0, 257, 1, 9000, 255, 33]
    misaligned = [False, False, True, False, True, False, True]
    a, ref = _run(em, dtype, 0.9, True, sizes, misaligned, 3, seed=5)
    em.reset_stats()
    b, _ = _run(em, dtype, 0.9, True, sizes, misaligned, 3, seed=5, max_blocks=max_blocks)
    assert em.stats()["max_grid"] == max_blocks
    for attr in ("var", "sum", "cnt", "mom"):
        np.testing.assert_array_equal(_flat(a, attr), _flat(b, attr), err_msg=attr)
    _check(b, ref, dtype, 0.9, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lr_dtype", ["float32", "float64"])
def test_lr_read_from_device_in_its_dtype(em, dtype, lr_dtype):
    """lr is read from device memory as float32 or float64 (0.05 differs
    between the two): the result matches the reference with that lr."""
    sizes = [1000, 7, 4097]
    tensors, ref = _run(em, dtype, 0.9, False, sizes, [False, True, False], 5, seed=11,
                        lr_dtype=lr_dtype)
    _check(tensors, ref, dtype, 0.9, False)
    if dtype == "float64":
        # Sharp enough to tell the two learning rates apart.
        other = ExpectigradNumpy(np.zeros(0))
        _, other = _run(em, dtype, 0.9, False, sizes, [False, True, False], 5, seed=11,
                        lr_dtype="float64" if lr_dtype == "float32" else "float32")
        assert np.max(np.abs(_flat(tensors, "var") - other.x)) > 1e-11


def test_without_momentum_beta_is_ignored(em):
    """No momentum slot: no bias correction, whatever beta is passed."""
    sizes = [300, 5]
    a, ref = _run(em, "float64", 0.0, True, sizes, [False, False], 3, seed=2)
    rng, x0, offsets, b = _make("float64", 0.0, True, sizes, [False, False], 2)
    for t in range(1, 4):
        g = _round(_gradient(rng, offsets[-1], t), "float64")
        for i, x in enumerate(b):
            x.grad[...] = g[offsets[i]:offsets[i + 1]]
        _apply(em, b, LR, 0.9, t, "float32")  # beta 0.9 but no momentum slots
    np.testing.assert_array_equal(_flat(a, "var"), _flat(b, "var"))


@pytest.mark.parametrize("lr_dtype", ["float32", "float64"])
@pytest.mark.parametrize("lr,step", [(float("nan"), 1), (float("inf"), 1), (-1e-3, 1),
                                     (LR, 0), (LR, -3)],
                         ids=["lr-nan", "lr-inf", "lr-negative", "step-0", "step-negative"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_invalid_lr_or_step_changes_nothing(em, dtype, lr_dtype, lr, step):
    """The device-side check: an invalid lr or step leaves every array as it
    was (the callers validate and report; the kernel cannot)."""
    sizes = [4097, 0, 45]
    _, _, _, tensors = _make(dtype, 0.9, True, sizes, [False, False, True], 3)
    for x in tensors:
        x.grad[...] = 0.5
        x.sum[...] = 2.0
        x.cnt[...] = 1.0
        x.mom[...] = 0.25
    before = {k: [b.copy() for x in tensors for b in [x.bufs[k]]]
              for k in ("var", "sum", "cnt", "mom")}
    _apply(em, tensors, lr, 0.9, step, lr_dtype)
    assert em.stats()["launches"] == 1  # launched: the kernel itself refused
    for k, bufs in before.items():
        for old, x in zip(bufs, tensors):
            np.testing.assert_array_equal(x.bufs[k].view(np.uint8), old.view(np.uint8),
                                          err_msg=k)


def test_zero_lr_is_valid(em):
    """lr == 0 (a warm-up's first step) is legal: the state advances, the
    variable does not move."""
    _, x0, _, tensors = _make("float32", 0.9, True, [300], [False], 4)
    tensors[0].grad[...] = 0.5
    _apply(em, tensors, 0.0, 0.9, 1)
    np.testing.assert_array_equal(tensors[0].var, x0)
    np.testing.assert_allclose(tensors[0].sum, 0.25)
    np.testing.assert_array_equal(tensors[0].cnt, 1.0)


def test_empty_inputs_launch_nothing(em):
    em.apply([], [], None, None, [], LR, 0.9, EPS, 1)
    z = [np.zeros(0, np.float32) for _ in range(3)]
    em.apply(z, [np.zeros(0, np.float32)] * 3, None, None, z, float("nan"), 0.9, EPS, 0)
    assert em.stats()["launches"] == 0


def test_bfloat16_as_uint16_bits(em):
    """bfloat16 data held as uint16 bit patterns, named with dtype=."""
    x = np.array([1.0, -2.0, 0.5], ml_dtypes.bfloat16)
    g = np.array([0.5, 0.0, -1.0], ml_dtypes.bfloat16)
    s = np.zeros(3, np.float32)
    bits = x.view(np.uint16).copy()
    em.apply([bits], [s], None, None, [g.view(np.uint16)], LR, 0.0, EPS, 1,
             dtype="bfloat16")
    em.apply([x], [np.zeros(3, np.float32)], None, None, [g], LR, 0.0, EPS, 1)
    np.testing.assert_array_equal(bits, x.view(np.uint16))
    assert float(x[1]) == -2.0 and float(x[0]) < 1.0


@pytest.mark.parametrize("bad,error,match", [
    (dict(var=[np.zeros(4, np.int32)]), TypeError, "float32, float64, float16 or bfloat16"),
    (dict(sum=[np.zeros(4, np.float64)]), ValueError, r"sum\[0\] must be float32"),
    (dict(grad=[np.zeros(3, np.float32)]), ValueError, r"grad\[0\] must be float32"),
    (dict(grad=[np.zeros(8, np.float32)[::2]]), ValueError, "C-contiguous"),
    (dict(beta=1.0), ValueError, "beta"),
    (dict(lr_dtype="float16"), ValueError, "lr_dtype"),
], ids=lambda v: str(v)[:30])
def test_argument_checks(em, bad, error, match):
    args = dict(var=[np.zeros(4, np.float32)], sum=[np.zeros(4, np.float32)], count=None,
                momentum=None, grad=[np.zeros(4, np.float32)], lr=LR, beta=0.9,
                epsilon=EPS, step=1)
    args.update(bad)
    with pytest.raises(error, match=match):
        em.apply(**args)
    assert em.stats()["launches"] == 0
