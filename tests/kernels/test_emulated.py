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
correction) and the device-side validation of lr/step; and the launcher:
every input validated before the first launch (a rejected call changes
nothing), empty tensors with null pointers, a launch that fails after others
were queued (reported with what was queued), each launch's own status (not an
error pending from an earlier call), the grid sized per device, deterministic
kernel-argument bytes. It does not check the GPU memory model, concurrency or
the device's math library: tools/gpu_check does, on a GPU.

Tolerances: float32/float64 against a reference run in the same precision
(the same operations, rounded alike); float16/bfloat16 against a float32
reference whose variable is rounded to 16 bits after each step (as the
kernel stores it), the variable within two units in the last place. The
state (sum, count and momentum) is float32 for 16-bit variables, never
rounded to 16 bits: it is held to float32's tolerance.
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
    emulated.fail_launch(-1)
    emulated.set_last_error(0)
    emulated.set_device(0)


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
        self.mom = self._alloc("mom", _state_dtype(dtype), 0.0) if beta > 0 else None
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


def _apply(em, tensors, lr, beta, t, lr_dtype="float32", **kw):
    sparse = tensors[0].cnt is not None
    mom = tensors[0].mom is not None
    return em.apply([x.var for x in tensors], [x.sum for x in tensors],
                    [x.cnt for x in tensors] if sparse else None,
                    [x.mom for x in tensors] if mom else None,
                    [x.grad for x in tensors], lr, beta, EPS, t, lr_dtype=lr_dtype, **kw)


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
    if beta > 0:  # state, like sum: float32 for 16-bit variables
        np.testing.assert_allclose(_flat(tensors, "mom"), ref.m, **state, err_msg="momentum")
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
        if dtype in ("float16", "bfloat16"):
            # The kernel stores the variable in 16 bits; momentum stays float32.
            ref.x = _round(ref.x, dtype)
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


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_variables_keep_momentum_in_float32(em, dtype):
    """Momentum is state: for a 16-bit variable it is float32, read and
    written without a 16-bit rounding, so it keeps float32 precision."""
    _, x0, _, tensors = _make(dtype, 0.9, False, [300], [False], 6)
    x = tensors[0]
    assert x.mom.dtype == np.float32 and x.var.dtype == NP[dtype]
    ref = ExpectigradNumpy(x0, lr=float(np.float32(LR)), beta=0.9, eps=EPS,
                           sparse_counter=False, dtype=np.float32)
    rng = np.random.default_rng(1)
    for t in range(1, 4):
        g = _round(rng.standard_normal(300), dtype)
        x.grad[...] = g
        _apply(em, tensors, LR, 0.9, t)
        ref.step(g)
        ref.x = _round(ref.x, dtype)
    np.testing.assert_allclose(x.mom, ref.m, rtol=1e-6, atol=1e-7)
    # Most values are not representable in 16 bits: nothing rounded them.
    assert np.mean(_round(x.mom, dtype) != x.mom) > 0.9


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
    (dict(var=[[0.0] * 4]), TypeError, r"var\[0\] must be a NumPy array, got list"),
    (dict(grad=[None]), TypeError, r"grad\[0\] must be a NumPy array, got NoneType"),
    (dict(count=["x"]), TypeError, r"count\[0\] must be a NumPy array, got str"),
    # Momentum is state: float32 for 16-bit and float32 variables, float64 for
    # float64 ones; never the 16-bit storage dtype.
    (dict(var=[np.zeros(4, np.float16)], grad=[np.zeros(4, np.float16)],
          momentum=[np.zeros(4, np.float16)]), ValueError,
     r"momentum\[0\] must be float32 \(the state dtype of float16 variables\) with as "
     r"many elements as var\[0\], got float16 with 4"),
    (dict(var=[np.zeros(4, ml_dtypes.bfloat16)], grad=[np.zeros(4, ml_dtypes.bfloat16)],
          momentum=[np.zeros(4, ml_dtypes.bfloat16)]), ValueError,
     r"momentum\[0\] must be float32 \(the state dtype of bfloat16 variables\)"),
    (dict(var=[np.zeros(4)], sum=[np.zeros(4)], grad=[np.zeros(4)],
          momentum=[np.zeros(4, np.float32)]), ValueError,
     r"momentum\[0\] must be float64 \(the state dtype of float64 variables\)"),
    (dict(momentum=[np.zeros(3, np.float32)]), ValueError,
     r"momentum\[0\] must be float32 .*got float32 with 3"),
    (dict(grad=np.zeros(4, np.float32)), TypeError, "grad must be a list of arrays, got ndarray"),
], ids=lambda v: str(v)[:30])
def test_argument_checks(em, bad, error, match):
    args = dict(var=[np.zeros(4, np.float32)], sum=[np.zeros(4, np.float32)], count=None,
                momentum=None, grad=[np.zeros(4, np.float32)], lr=LR, beta=0.9,
                epsilon=EPS, step=1)
    args.update(bad)
    with pytest.raises(error, match=match):
        em.apply(**args)
    assert em.stats()["launches"] == 0


# ------------------------------------------------------------- the launcher
def _state_snapshot(tensors):
    return [{k: b.copy() for k, b in x.bufs.items()} for x in tensors]


def _assert_unchanged(tensors, snapshot, which=None):
    for i, (x, old) in enumerate(zip(tensors, snapshot)):
        if which is not None and i not in which:
            continue
        for k, b in old.items():
            np.testing.assert_array_equal(x.bufs[k].view(np.uint8), b.view(np.uint8),
                                          err_msg=f"{k}[{i}] changed")


def _filled(dtype, sizes, beta=0.9, sparse=True, seed=3):
    """Tensors whose step is easy to see: grad 0.5, sum 2 -> 2.25."""
    _, _, _, tensors = _make(dtype, beta, sparse, sizes, [False] * len(sizes), seed)
    for x in tensors:
        x.grad[...] = 0.5
        x.sum[...] = 2.0
        if x.cnt is not None:
            x.cnt[...] = 1.0
        if x.mom is not None:
            x.mom[...] = 0.25
    return tensors


@pytest.mark.parametrize("beta,sparse", VARIANTS)
def test_empty_tensors_with_null_pointers_anywhere(em, beta, sparse):
    """130 tensors, the first three and every fifth empty: the harness passes
    empty arrays with null pointers (as TF and XLA may). The kernel variant
    (count, momentum) comes from the first non-empty tensor, not tensor 0."""
    sizes = [0, 0, 0] + [0 if i % 5 == 0 else 1 + (i * 37) % 300 for i in range(127)]
    tensors, ref = _run(em, "float64", beta, sparse, sizes, [False] * len(sizes), 2, seed=7)
    _check(tensors, ref, "float64", beta, sparse)
    per_step = -(-sum(s > 0 for s in sizes) // MAX_TENSORS)
    assert per_step == 3 and em.stats()["launches"] == 2 * per_step


SIZES_130 = [1 + (i * 37) % 200 for i in range(130)]  # 4 launches: 40+40+40+10


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("corrupt,chunk,reason", [
    ([("grad", 95, 0)], 95, "grad is null"),
    ([("var", 125, 0)], 125, "var is null"),
    ([("sum", 41, 0)], 41, "sum is null"),
    ([("momentum", 100, 0)], 100, "momentum is null but the first non-empty chunk has"),
    ([("momentum", 0, 0)], 1, "momentum is set but the first non-empty chunk has none"),
    ([("count", 80, 0)], 80, "count is null but the first non-empty chunk has"),
    ([("var", 99, 1)], 99, "a pointer is not aligned to its element type"),
    ([("sum", 120, 2)], 120, "a pointer is not aligned to its element type"),
    # Momentum is aligned to the state type (4 bytes for float16 variables).
    ([("momentum", 70, 2)], 70, "a pointer is not aligned to its element type"),
    ([("size", 110, -1)], 110, "negative size"),
    ([("size", 90, 2**61), ("size", 91, 2**61)], 80, r"the elements of one launch \(40 chunks\) reach 2\^62"),
], ids=lambda v: str(v)[:28])
def test_rejected_call_launches_nothing_and_changes_nothing(em, dtype, corrupt, chunk,
                                                            reason):
    """A bad chunk anywhere (here in the 2nd-4th launch's range) is found
    before the first launch: ValueError naming the chunk; no launch; every
    byte of every tensor as it was."""
    tensors = _filled(dtype, SIZES_130)
    snap = _state_snapshot(tensors)
    with pytest.raises(ValueError, match=rf"\(chunk {chunk}\): {reason}.*nothing was "
                                         r"launched, nothing changed"):
        _apply(em, tensors, LR, 0.9, 1, corrupt=corrupt)
    assert em.stats()["launches"] == 0
    _assert_unchanged(tensors, snap)
    # The same tensors, uncorrupted: 4 launches, every tensor updated.
    rep = _apply(em, tensors, LR, 0.9, 1)
    assert rep == dict(stage="ok", code=0, launches_planned=4, launches_queued=4,
                       chunk=-1, reason="")
    assert all(np.all(x.sum == 2.25) for x in tensors)


@pytest.mark.parametrize("after", [0, 1, 3])
def test_failed_launch_says_what_was_queued(em, after):
    """A launch that fails after validation (a CUDA runtime failure; injected
    here) stops the call. Launch 1 failing changes nothing; launch k > 1
    failing leaves launches 1..k-1 applied (they cannot be withdrawn) and the
    rest untouched, and the error says exactly that. The launcher consumes
    its own error, so a later caller's cudaGetLastError() is clean."""
    tensors = _filled("float32", SIZES_130)
    snap = _state_snapshot(tensors)
    em.fail_launch(after)
    with pytest.raises(RuntimeError) as info:
        _apply(em, tensors, LR, 0.9, 1)
    msg = str(info.value)
    assert f"kernel launch {after + 1} of 4 failed: unspecified launch failure" in msg, msg
    assert em.stats()["launches"] == after
    assert em.stats()["last_error"] == 0
    done = MAX_TENSORS * after
    if after == 0:
        assert "nothing was launched, nothing changed" in msg
    else:
        assert (f"launches 1-{after} were already queued, so chunks 0-{done - 1} may be "
                "updated and the rest are not (a partial step)") in msg, msg
        assert "treat this device's state as lost" in msg
    for i, x in enumerate(tensors):
        assert np.all(x.sum == (2.25 if i < done else 2.0)), i
    _assert_unchanged(tensors, snap, which=set(range(done, len(tensors))))


def test_error_pending_from_an_earlier_call_is_not_this_launchs(em):
    """An error left pending (cudaGetLastError) by an unrelated earlier call
    on this thread does not make a launch that was queued look failed, and is
    left for its owner."""
    tensors = _filled("float32", SIZES_130)
    em.set_last_error(1)  # cudaErrorInvalidValue, from "someone else"
    rep = _apply(em, tensors, LR, 0.9, 1)
    assert rep["stage"] == "ok" and rep["launches_queued"] == 4
    assert all(np.all(x.sum == 2.25) for x in tensors)
    assert em.stats()["last_error"] == 1


def test_grid_uses_each_devices_multiprocessor_count(em):
    """The grid is capped at 8 blocks per multiprocessor of the CURRENT
    device, queried once per device and cached (as on a GPU: a later change
    of what the device reports is not seen)."""
    em.set_multiprocessors(3, device=1)
    em.set_multiprocessors(5, device=2)
    tensors = _filled("float32", [THREADS * 200], beta=0.0, sparse=False)  # 200 blocks wanted
    for device, sms in [(1, 3), (2, 5), (1, 3)]:
        em.set_device(device)
        em.reset_stats()
        _apply(em, tensors, LR, 0.0, 1)
        assert em.stats()["max_grid"] == 8 * sms, (device, em.stats())
    queries = em.stats()["attribute_queries"]
    em.set_multiprocessors(7, device=2)
    em.set_device(2)
    em.reset_stats()
    _apply(em, tensors, LR, 0.0, 1)
    assert em.stats()["max_grid"] == 8 * 5
    assert em.stats()["attribute_queries"] == queries


def test_kernel_arguments_are_fully_initialised(em):
    """The kernel's by-value arguments (LaunchArgs: 40 slots per array, and
    the scalars) are copied to the device whole: the unused slots and the
    padding are zero, not left over from an earlier call."""
    many = _filled("float32", [5] * 45)  # fills all 40 slots of the stack's LaunchArgs
    _apply(em, many, LR, 0.9, 1)
    sizes = [7, 300, 2]
    tensors = _filled("float32", sizes)
    _apply(em, tensors, LR, 0.9, 1)
    args, scalars = em.last_launch_params()
    slots = MAX_TENSORS
    assert len(args) == 6 * 8 * slots + 8 and len(scalars) == 40
    for k, name in enumerate(["var", "sum", "cnt", "mom", "grad"]):
        ptrs = np.frombuffer(args[8 * slots * k:8 * slots * (k + 1)], np.uint64)
        assert np.all(ptrs[:3] != 0) and np.all(ptrs[3:] == 0), name
    ends = np.frombuffer(args[40 * slots:48 * slots], np.int64)
    np.testing.assert_array_equal(ends, np.cumsum(sizes).tolist() + [0] * (slots - 3))
    assert int.from_bytes(args[48 * slots:48 * slots + 4], "little") == 3
    assert args[48 * slots + 4:] == b"\0" * 4  # padding
    assert scalars[33:] == b"\0" * 7  # padding after lr_is_double
    _apply(em, tensors, LR, 0.9, 2)
    again = em.last_launch_params()
    assert again[0] == args  # same pointers: identical bytes
