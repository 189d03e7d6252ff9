"""The backend contract: every TensorOps member, on every backend, against the NumPy backend.

One suite parametrised over backends (Keras 3's way): the NumPy backend is the oracle. Results are
compared bitwise where the arithmetic is the same on both sides (data movement, selection, casts,
single IEEE operations); where a framework sums or interpolates in another order (matmul, bilinear
resize) the bound is the smallest that holds, stated next to the assert with its reason.

`test_protocol_is_fully_covered` fails when TensorOps gains a member that no test here `@covers`.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fewstep.backends import get_backend
from fewstep.core.ops import TensorOps

BACKENDS = [
    "numpy",
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("mindspore", marks=pytest.mark.mindspore),
]

REF = get_backend("numpy")
_COVERED = set()


def covers(*members):
    """Record which protocol members a test checks (see test_protocol_is_fully_covered)."""
    _COVERED.update(members)
    return lambda fn: fn


def protocol_members():
    names = set(getattr(TensorOps, "__annotations__", {}))
    names |= {n for n, v in vars(TensorOps).items() if not n.startswith("_") and inspect.isfunction(v)}
    return names


@pytest.fixture(params=BACKENDS)
def ops(request):
    return get_backend(request.param)


def float_dtypes(ops):
    """Float dtypes the backend holds; NumPy has no bfloat16."""
    return ("float32", "float16", "float64") + (() if ops.name == "numpy" else ("bfloat16",))


def round_bf16(a) -> np.ndarray:
    """An independent bfloat16 oracle: float32 rounded to nearest-even in the top 16 bits, as float32."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def host(a, dtype):
    """What `ops.to_numpy(ops.from_numpy(a, dtype=dtype))` should return, computed in NumPy."""
    return round_bf16(a) if dtype == "bfloat16" else np.asarray(a).astype(dtype)


def oracle(fn, *arrays, dtype):
    """The NumPy backend's result of `fn` on the values as `dtype` holds them (bfloat16: computed on
    the rounded float32 values, then rounded to bfloat16 again)."""
    if dtype == "bfloat16":
        return round_bf16(fn(*[round_bf16(a) for a in arrays]))
    return fn(*[np.asarray(a).astype(dtype) for a in arrays])


def assert_same(ops, t, expected, dtype=None):
    """Bitwise equal values, equal shape, and the tensor's dtype is `dtype` (default: expected's)."""
    assert ops.is_tensor(t)
    assert ops.dtype_name(t) == (dtype or np.asarray(expected).dtype.name)
    got = ops.to_numpy(t)
    assert got.shape == np.shape(expected)
    np.testing.assert_array_equal(got, expected, strict=False)


def ulp_bound(dtype, magnitude, ulps):
    """`ulps` units in the last place of `dtype` at `magnitude`."""
    eps = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7, "float64": 2.0**-52}[dtype]
    return ulps * eps * magnitude


def data(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------------------- coverage


def test_protocol_is_fully_covered():
    members = protocol_members()
    assert members, "could not read TensorOps' members"
    missing = members - _COVERED
    assert not missing, f"TensorOps members without a contract test: {sorted(missing)}"
    stale = _COVERED - members
    assert not stale, f"contract tests cover members TensorOps no longer has: {sorted(stale)}"


@covers("name")
def test_backend_satisfies_protocol(ops, request):
    assert isinstance(ops, TensorOps)
    assert ops.name == request.node.callspec.params["ops"]
    for member in protocol_members():
        assert hasattr(ops, member), member


# ------------------------------------------------------------------------- host <-> framework


@covers("from_numpy", "to_numpy", "dtype_name")
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32", "uint8", "bool"])
def test_from_numpy_round_trip(ops, dtype):
    a = (data(2, 3, 4) * 10).astype(dtype)
    t = ops.from_numpy(a)
    assert_same(ops, t, REF.to_numpy(REF.from_numpy(a)))
    assert ops.to_numpy(t).dtype == np.dtype(dtype)


def test_from_numpy_zero_dim(ops):
    t = ops.from_numpy(np.float32(1.5))
    assert ops.shape(t) == ()
    assert_same(ops, t, np.array(1.5, np.float32))


@covers("from_numpy")
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int32"])
def test_from_numpy_casts_on_the_framework(ops, dtype):
    # float32 -> float16/bfloat16 is round-to-nearest-even everywhere, so bitwise equal to the oracle;
    # the values include float16 and bfloat16 ties, a float16 subnormal and float16 overflow.
    special = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8), 1e-6, 7e4, -7e4, 0.0]
    a = np.concatenate([data(64, scale=3.0), np.array(special, np.float32)])
    if dtype not in float_dtypes(ops) + ("int32",):
        with pytest.raises(TypeError, match="bfloat16"):
            ops.from_numpy(a, dtype=dtype)
        return
    if dtype == "int32":
        a = a[np.abs(a) < 1e4]  # in range: float -> int truncates toward zero everywhere
    t = ops.from_numpy(a, dtype=dtype)
    assert_same(ops, t, host(a, dtype), dtype=dtype)  # 7e4 overflows float16 to inf everywhere


@covers("from_numpy")
def test_from_numpy_like(ops):
    like = ops.from_numpy(np.zeros(3, np.float16))
    a = data(5, seed=1)
    # dtype from like
    assert_same(ops, ops.from_numpy(a, like=like), a.astype(np.float16))
    # an explicit dtype wins over like's
    assert_same(ops, ops.from_numpy(a, like=like, dtype="float64"), a.astype(np.float64))
    if ops.name != "numpy":
        t = ops.from_numpy(a, like=ops.from_numpy(np.zeros(1, np.float32), dtype="bfloat16"))
        assert_same(ops, t, round_bf16(a), dtype="bfloat16")


@covers("from_numpy")
def test_from_numpy_awkward_arrays(ops):
    base = data(4, 6, seed=2)
    read_only = base.copy()
    read_only.flags.writeable = False
    views = {
        "read-only": read_only,
        "transposed": base.T,
        "negative strides": base[::-1, ::-2],
        "big-endian": base.astype(">f4"),
    }
    for label, a in views.items():
        t = ops.from_numpy(a)
        np.testing.assert_array_equal(ops.to_numpy(t), np.asarray(a, dtype=np.float32), err_msg=label)
        assert ops.shape(t) == a.shape, label
    if ops.name != "numpy":
        # a framework tensor made from a strided view must not alias the view's base
        t = ops.from_numpy(base.T)
        before = ops.to_numpy(t).copy()
        base += 1.0
        np.testing.assert_array_equal(ops.to_numpy(t), before)


@covers("to_numpy")
def test_to_numpy_bfloat16_comes_back_float32(ops):
    if ops.name == "numpy":  # NumPy has no bfloat16: refused with the reason, never silently float32
        with pytest.raises(TypeError, match="bfloat16"):
            ops.from_numpy(data(3, 4), dtype="bfloat16")
        return
    t = ops.from_numpy(data(3, 4), dtype="bfloat16")
    got = ops.to_numpy(t)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, round_bf16(data(3, 4)))


@covers("is_tensor")
def test_is_tensor(ops):
    assert ops.is_tensor(ops.from_numpy(data(2)))
    assert not ops.is_tensor([1.0, 2.0])
    assert not ops.is_tensor(1.0)
    assert not ops.is_tensor(None)
    if ops.name != "numpy":
        assert not ops.is_tensor(data(2))


@covers("shape")
@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4, 5)])
def test_shape(ops, shape):
    got = ops.shape(ops.from_numpy(np.zeros(shape, np.float32)))
    assert got == REF.shape(np.zeros(shape, np.float32)) == shape
    assert type(got) is tuple and all(type(d) is int for d in got)


@covers("dtype_name")
def test_dtype_name(ops):
    for dtype in float_dtypes(ops) + ("int64", "int32", "uint8", "bool"):
        t = ops.cast(ops.from_numpy(np.zeros(2, np.float32)), dtype)
        assert ops.dtype_name(t) == dtype


# ---------------------------------------------------------------------------------- casts, layout


@covers("cast")
@pytest.mark.parametrize("src", ["float32", "float16", "float64"])
@pytest.mark.parametrize("dst", ["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"])
def test_cast(ops, src, dst):
    a = data(40, seed=3, scale=4.0)
    if dst == "uint8":
        a = np.abs(a)  # negative float -> uint8 is undefined behaviour in C, and frameworks disagree
    a = a.astype(src)
    x = ops.from_numpy(a)
    if dst not in float_dtypes(ops) + ("int64", "int32", "uint8", "bool"):
        with pytest.raises(TypeError):
            ops.cast(x, dst)
        return
    # src values are exact in float32, so rounding src -> bfloat16 equals rounding their float32 copy
    expected = round_bf16(a.astype(np.float32)) if dst == "bfloat16" else a.astype(dst)
    assert_same(ops, ops.cast(x, dst), expected, dtype=dst)
    if dst == src:
        assert ops.cast(x, dst) is x  # a no-op returns the tensor itself


@covers("reshape")
def test_reshape(ops):
    a = data(2, 3, 4)
    x = ops.from_numpy(a)
    for shape in [(6, 4), (24,), (2, -1), [4, 3, 2]]:
        assert_same(ops, ops.reshape(x, shape), REF.reshape(a, shape))


@covers("permute_dims")
def test_permute_dims(ops):
    a = data(2, 3, 4, 5)
    x = ops.from_numpy(a)
    for axes in [(0, 2, 3, 1), (3, 2, 1, 0), [0, 1, 2, 3]]:
        assert_same(ops, ops.permute_dims(x, axes), REF.permute_dims(a, axes))


@covers("concat")
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(ops, axis):
    parts = [data(2, 3, 4, seed=s) for s in range(3)]
    got = ops.concat([ops.from_numpy(p) for p in parts], axis=axis)
    assert_same(ops, got, REF.concat(parts, axis=axis))
    # a tuple works as well as a list, and axis defaults to 0
    assert_same(ops, ops.concat(tuple(ops.from_numpy(p) for p in parts)), REF.concat(parts))


@covers("split")
@pytest.mark.parametrize("sections,axis", [(2, 0), (3, 1), (4, -1), ([1, 2], 1), ([3, 0, 1], -1), ((2,), 0)])
def test_split(ops, sections, axis):
    a = data(2, 3, 4)
    got = ops.split(ops.from_numpy(a), sections, axis=axis)
    expected = REF.split(a, sections, axis=axis)
    assert isinstance(got, list) and len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_same(ops, g, e)


def test_split_unequal_parts_is_an_error(ops):
    with pytest.raises(ValueError):
        ops.split(ops.from_numpy(data(2, 3, 4)), 3, axis=-1)


# ------------------------------------------------------------------------------ elementwise, maths


@covers("where")
def test_where(ops):
    a, b = data(3, 4, seed=4), data(3, 4, seed=5)
    cond = a > b
    for dtype in float_dtypes(ops):
        got = ops.where(ops.from_numpy(cond), ops.from_numpy(a, dtype=dtype), ops.from_numpy(b, dtype=dtype))
        assert_same(ops, got, oracle(lambda x, y: REF.where(cond, x, y), a, b, dtype=dtype), dtype=dtype)
    # broadcasting cond over a batch
    got = ops.where(ops.from_numpy(cond[:1]), ops.from_numpy(a), ops.from_numpy(b))
    assert_same(ops, got, REF.where(cond[:1], a, b))


def fill_bounds(bounds, tensor_bounds):
    """(lo, hi) with the array entries replaced, in order, by `tensor_bounds`."""
    it = iter(tensor_bounds)
    return [next(it) if isinstance(v, np.ndarray) else v for v in bounds]


@covers("clip")
@pytest.mark.parametrize("bounds", ["floats", "lo only", "hi only", "none", "tensors", "broadcast tensor",
                                    "float and tensor", "crossed"])
def test_clip(ops, bounds):
    a = data(2, 3, 5, seed=6, scale=2.0)
    lo_t, hi_t = data(2, 3, 5, seed=7) - 1.0, data(2, 3, 5, seed=8) + 1.0
    row = data(5, seed=9)  # broadcasts along the last axis
    choices = {
        "floats": (-0.3, 0.7), "lo only": (-0.3, None), "hi only": (None, 0.7), "none": (None, None),
        "tensors": (lo_t, hi_t), "broadcast tensor": (row, None), "float and tensor": (-1.5, row),
        "crossed": (0.5, -0.5),  # lo > hi: np.clip returns hi everywhere
    }
    lo, hi = choices[bounds]
    for dtype in float_dtypes(ops):
        def as_bound(v):
            return ops.from_numpy(v, dtype=dtype) if isinstance(v, np.ndarray) else v

        got = ops.clip(ops.from_numpy(a, dtype=dtype), as_bound(lo), as_bound(hi))
        # clip only selects, so even float16/bfloat16 results are bitwise those of NumPy on the same
        # values; float bounds round to the dtype the same way on every backend.
        def reference(x, *tensor_bounds):
            lo_, hi_ = fill_bounds((lo, hi), tensor_bounds)
            return x if lo_ is None and hi_ is None else REF.clip(x, lo_, hi_)

        expected = oracle(reference, a, *(v for v in (lo, hi) if isinstance(v, np.ndarray)), dtype=dtype)
        assert_same(ops, got, expected, dtype=dtype)


# Matmul is not bitwise: BLAS sums the K products in its own order (blocked, FMA), NumPy in another.
# Summation error scales with sum_k |a_ik| |b_kj|, so the bound is that many ulps of it per element.
# Measured worst (K=8): float32 0.89 ulp on torch, 0 on MindSpore; float16/bfloat16/float64 bitwise
# here, but another BLAS build may reorder those sums too, so they get the same 1-ulp allowance.
MATMUL_ULPS = {"float64": 1, "float32": 1, "float16": 1, "bfloat16": 1}


@covers("matmul")
@pytest.mark.parametrize("shapes", [((4, 8), (8, 5)), ((2, 3, 4, 8), (2, 3, 8, 5)), ((2, 4, 8), (8, 5))],
                         ids=["2d", "batched", "broadcast"])
def test_matmul(ops, shapes):
    a, b = data(*shapes[0], seed=10), data(*shapes[1], seed=11)
    for dtype in float_dtypes(ops):
        t = ops.matmul(ops.from_numpy(a, dtype=dtype), ops.from_numpy(b, dtype=dtype))
        assert ops.dtype_name(t) == dtype
        got = ops.to_numpy(t).astype(np.float64)
        expected = oracle(REF.matmul, a, b, dtype=dtype).astype(np.float64)
        assert got.shape == expected.shape
        scale = np.abs(host(a, dtype)).astype(np.float64) @ np.abs(host(b, dtype)).astype(np.float64)
        bound = ulp_bound(dtype, scale, MATMUL_ULPS[dtype])
        assert (np.abs(got - expected) <= bound).all(), (dtype, np.max(np.abs(got - expected) / bound))


# x + scale * (a @ b): torch fuses the scale and the addition into the GEMM (alpha * acc + x), NumPy
# and MindSpore round the product, the scaled product and the sum separately; each rounding is at
# most half an ulp of |x| + |scale| * |a| @ |b|, so 2 ulps of that bound every backend.
MATMUL_ADD_ULPS = 2


@covers("matmul_add")
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_matmul_add(ops, scale):
    a, b, x = data(6, 8, seed=13), data(8, 5, seed=14), data(6, 5, seed=15)
    for dtype in float_dtypes(ops):
        ta, tb, tx = (ops.from_numpy(v, dtype=dtype) for v in (a, b, x))
        t = ops.matmul_add(tx, ta, tb, scale)
        assert ops.dtype_name(t) == dtype
        np.testing.assert_array_equal(ops.to_numpy(tx), host(x, dtype))  # x is not modified
        got = ops.to_numpy(t).astype(np.float64)
        hx, ha, hb = (host(v, dtype).astype(np.float64) for v in (x, a, b))
        expected = hx + scale * (ha @ hb)
        bound = ulp_bound(dtype, np.abs(hx) + abs(scale) * (np.abs(ha) @ np.abs(hb)), MATMUL_ADD_ULPS)
        assert (np.abs(got - expected) <= bound).all(), (dtype, np.max(np.abs(got - expected) / bound))
        # with `out` = x: the same values, written in place where the framework can
        again = ops.matmul_add(tx, ta, tb, scale, out=tx)
        np.testing.assert_array_equal(ops.to_numpy(again), ops.to_numpy(t))
        if ops.name != "mindspore":
            np.testing.assert_array_equal(ops.to_numpy(tx), ops.to_numpy(t))


@covers("copy_into")
@pytest.mark.parametrize("src", ["float32", "float64"])
def test_copy_into(ops, src):
    a = data(5, 7, seed=21, scale=300.0)  # large enough that float16 and bfloat16 round
    for dst in float_dtypes(ops):
        out = ops.from_numpy(np.zeros((5, 7), np.float32), dtype=dst)
        got = ops.copy_into(out, ops.from_numpy(a, dtype=src))
        assert ops.dtype_name(got) == dst and ops.shape(got) == (5, 7)
        # rounded as `cast` rounds
        np.testing.assert_array_equal(ops.to_numpy(got), ops.to_numpy(ops.cast(ops.from_numpy(a, dtype=src), dst)))
        np.testing.assert_array_equal(ops.to_numpy(got), host(host(a, src), dst))
        if ops.name != "mindspore":  # written in place where the framework can
            np.testing.assert_array_equal(ops.to_numpy(out), ops.to_numpy(got))


@covers("host_view")
def test_host_view(ops):
    for dtype in ("float32", "float16", "float64"):
        x = ops.from_numpy(data(3, 4, seed=22), dtype=dtype)
        view = ops.host_view(x)
        if ops.name == "mindspore":
            assert view is None  # never shared: the runtime may still use the memory
            continue
        assert isinstance(view, np.ndarray) and view.dtype == np.dtype(dtype) and view.shape == (3, 4)
        view[1, 2] = 7.0  # writes reach the tensor: the same memory
        assert ops.to_numpy(x)[1, 2] == 7.0
    if ops.name != "numpy":
        assert ops.host_view(ops.from_numpy(data(3, 4), dtype="bfloat16")) is None  # NumPy has no bfloat16
    if ops.name != "mindspore":  # a strided view is no flat block of memory
        assert ops.host_view(ops.permute_dims(ops.from_numpy(data(3, 4)), (1, 0))) is None


@covers("host_buffer")
def test_host_buffer(ops):
    like = ops.from_numpy(data(2, 3))
    for dtype in float_dtypes(ops):
        buf = ops.host_buffer((2, 3), dtype, like=like)
        # bfloat16 values are kept as float32, which holds them exactly
        assert isinstance(buf, np.ndarray) and buf.shape == (2, 3) and buf.flags.writeable and buf.flags.c_contiguous
        assert buf.dtype == np.dtype("float32" if dtype == "bfloat16" else dtype)
        buf[...] = host(data(2, 3, seed=23), dtype)
        np.testing.assert_array_equal(ops.to_numpy(ops.from_numpy(buf, like=like, dtype=dtype)),
                                      host(data(2, 3, seed=23), dtype))


@pytest.mark.torch
@pytest.mark.parametrize("driver_agrees", [True, False])
def test_host_buffer_is_pinned_for_cuda_tensors_only(monkeypatch, driver_agrees):
    """What a CUDA machine would get, checked without one (CUDA's runtime is stood in): a buffer for a
    CUDA tensor is page-locked with cudaHostRegister, exactly its own memory, and unlocked when it is
    freed; one for a CPU tensor is not; where the driver refuses, the buffer stays ordinary memory."""
    import gc

    import torch

    calls = []

    class Runtime:
        @staticmethod
        def cudaHostRegister(address, size, flags):
            calls.append(("register", address, size))
            return 0 if driver_agrees else 2  # 2: cudaErrorMemoryAllocation

        @staticmethod
        def cudaHostUnregister(address):
            calls.append(("unregister", address))
            return 0

    monkeypatch.setattr(torch.cuda, "cudart", lambda: Runtime)
    ops = get_backend("torch")

    class CudaLike:
        device = torch.device("cuda", 0)

    ops.host_buffer((2, 3), "float16", like=torch.zeros(2, 3))
    ops.host_buffer((2, 3), "float16")
    assert calls == []
    buf = ops.host_buffer((2, 3), "bfloat16", like=CudaLike())
    assert buf.dtype == np.float32 and buf.shape == (2, 3)
    address = buf.ctypes.data
    assert calls == [("register", address, 24)]
    del buf
    gc.collect()
    assert calls[1:] == ([("unregister", address)] if driver_agrees else [])


@pytest.mark.torch
def test_ops_that_write_in_place_leave_inference_tensors_alone():
    """A weight made under torch.inference_mode (a pipeline moved or fused there) cannot be written
    outside it: matmul_add and copy_into return new tensors with the same values instead of failing."""
    import torch

    ops = get_backend("torch")
    a, b, x = (torch.from_numpy(v) for v in (data(6, 8, seed=13), data(8, 5, seed=14), data(6, 5, seed=15)))
    with torch.inference_mode():
        frozen = x.clone()
    got = ops.matmul_add(frozen, a, b, 0.5, out=frozen)
    assert got.data_ptr() != frozen.data_ptr() and torch.equal(got, ops.matmul_add(x, a, b, 0.5))
    assert torch.equal(frozen, x)
    half = ops.copy_into(frozen, x * 3)
    assert half.data_ptr() != frozen.data_ptr() and torch.equal(half, x * 3)
    assert ops.host_view(frozen) is None


@covers("all_finite")
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_all_finite(ops):
    a = data(4, 6, seed=16)
    for dtype in float_dtypes(ops):
        assert ops.all_finite(ops.from_numpy(a, dtype=dtype)) is True
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[2, 3] = bad
            assert ops.all_finite(ops.from_numpy(b, dtype=dtype)) is False, (dtype, bad)
            assert REF.all_finite(b) is False
    # the verdict is on the values the tensor holds: 7e4 is finite in float32, inf in float16
    big = np.full(3, 7e4, np.float32)
    assert ops.all_finite(ops.from_numpy(big)) is True
    assert ops.all_finite(ops.from_numpy(big, dtype="float16")) is False
    # integer and bool tensors hold no NaN or inf; an empty tensor has nothing that is not finite
    for dtype in ("int64", "int32", "uint8", "bool"):
        assert ops.all_finite(ops.cast(ops.from_numpy(np.abs(a)), dtype)) is True, dtype
    assert ops.all_finite(ops.from_numpy(np.zeros((0, 3), np.float32))) is True


# A reduction: each framework sums in its own order, so the bound is in ulps of the result against a float64
# oracle: 4 ulps for float32 / float64, 2 for float16 / bfloat16 (whose inputs are rounded too).
STD_RTOL = {"float32": 4 * 2.0 ** -23, "float64": 4 * 2.0 ** -52, "float16": 2 * 2.0 ** -10, "bfloat16": 2 * 2.0 ** -7}


@covers("std")
def test_std_per_item_with_bessels_correction(ops):
    a = data(3, 4, 5, 6, seed=17, scale=2.0) + 0.5
    expected = np.std(a.astype(np.float64), axis=(1, 2, 3), ddof=1, keepdims=True)
    for dtype in float_dtypes(ops):
        t = ops.std(ops.from_numpy(a, dtype=dtype), [1, 2, 3])
        assert ops.dtype_name(t) == dtype and ops.shape(t) == (3, 1, 1, 1)
        np.testing.assert_allclose(ops.to_numpy(t).astype(np.float64), expected, rtol=STD_RTOL[dtype], err_msg=dtype)
    # one axis, n - 1 = 1: [1, 3] has mean 2, squared deviations 2, std sqrt(2)
    two = ops.std(ops.from_numpy(np.float32([[1.0, 3.0], [2.0, 2.0]])), (1,))
    np.testing.assert_allclose(ops.to_numpy(two), [[np.sqrt(2.0)], [0.0]], rtol=1e-7)


# Bilinear resize is not bitwise: torch and MindSpore compute the source coordinate and weights in
# float32, NumPy in float64, and each blends in its own order; a weight off by an ulp of the
# coordinate moves the result by a few ulps of the data. Measured worst (ulps of max|x|): float32
# 3.7 torch / 3.5 MindSpore, float16 0.7, bfloat16 0.3. float64: the NumPy reference interpolates
# in float32 (numpy_backend.resize), so the oracle itself is only float32-accurate; its bound is
# in float32 ulps.
RESIZE_ULPS = {"float32": ("float32", 4), "float16": ("float16", 1), "bfloat16": ("bfloat16", 1),
               "float64": ("float32", 4)}


@covers("resize")
@pytest.mark.parametrize("size", [(14, 18), (21, 27), (3, 4), (5, 13), (7, 9)],
                         ids=["up2x", "up3x", "down", "mixed", "same"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize(ops, mode, size):
    a = data(2, 3, 7, 9, seed=12)
    for dtype in float_dtypes(ops):
        t = ops.resize(ops.from_numpy(a, dtype=dtype), size, mode=mode)
        expected = oracle(lambda x: REF.resize(x, size, mode=mode), a, dtype=dtype)
        if mode == "nearest":
            assert_same(ops, t, expected, dtype=dtype)  # pure gather: bitwise
            continue
        assert ops.dtype_name(t) == dtype
        got = ops.to_numpy(t)
        assert got.shape == expected.shape == (2, 3) + size
        unit, ulps = RESIZE_ULPS[dtype]  # see RESIZE_ULPS for why not bitwise
        bound = ulp_bound(unit, float(np.abs(a).max()), ulps)
        err = np.abs(got.astype(np.float64) - expected.astype(np.float64)).max()
        assert err <= bound, (dtype, err, bound)


def test_resize_unknown_mode(ops):
    with pytest.raises(ValueError, match="nearest"):
        ops.resize(ops.from_numpy(data(1, 1, 2, 2)), (4, 4), mode="bicubic")


# ----------------------------------------------------------------------------- autograd, noise


@covers("no_grad")
def test_no_grad(ops):
    x = ops.from_numpy(data(3))
    ctx = ops.no_grad()
    with ctx:
        y = x * 2.0
    assert_same(ops, y, data(3) * 2.0)
    if ops.name == "torch":
        import torch

        w = torch.ones(3, requires_grad=True)
        with ops.no_grad():
            assert not (w * 2.0).requires_grad
        assert (w * 2.0).requires_grad  # restored on exit
        np.testing.assert_array_equal(ops.to_numpy(w * 2.0), np.full(3, 2.0, np.float32))  # detaches


@covers("randn")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_randn_global_rng(ops, dtype):
    like = ops.from_numpy(np.zeros(1, np.float32))
    for kwargs in ({}, {"like": like}):
        z = ops.randn((2, 3, 4), dtype, None, **kwargs)
        assert ops.is_tensor(z)
        assert ops.shape(z) == (2, 3, 4)
        assert ops.dtype_name(z) == dtype
        v = ops.to_numpy(z).astype(np.float64)
        assert np.isfinite(v).all() and v.std() > 0.3  # noise, not zeros


@covers("randn")
@pytest.mark.parametrize("bad", ["seed", 1.5, object(), [object(), object()]],
                         ids=["str", "float", "object", "list of objects"])
def test_randn_rejects_unknown_generators(ops, bad):
    with pytest.raises(TypeError, match="fewstep.Generator") as err:
        ops.randn((2, 3), "float32", bad)
    for accepted in ("np.random.Generator", "int seed"):
        assert accepted in str(err.value)
    if ops.name == "torch":
        assert "torch.Generator" in str(err.value)


@pytest.mark.torch
def test_torch_randn_matches_diffusers():
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    ops = get_backend("torch")
    shape = (2, 4, 3, 3)
    got = ops.randn(shape, "float32", torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, torch.randn(shape, generator=torch.Generator().manual_seed(7)), rtol=0, atol=0)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    got = ops.randn(shape, "float16", gens)
    expected = randn_tensor(shape, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], dtype=torch.float16)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # per batch item: item 1 is what generator 2 alone draws for one item
    one = torch.randn((1,) + shape[1:], generator=torch.Generator().manual_seed(2), dtype=torch.float16)
    torch.testing.assert_close(got[1:], one, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- operators


# Bitwise on every backend only with scalars exact in float16 (torch keeps a Python float in float32
# for half arithmetic, NumPy and MindSpore round it to float16 first) and `s / x` only for s a power
# of two (torch and MindSpore compute it as `s * (1 / x)`, which rounds twice unless s is one).
EXACT_EXPRESSIONS = {
    "x * 0.5 + 1.0": lambda x, y: x * 0.5 + 1.0,
    "1.0 - x / 4.0": lambda x, y: 1.0 - x / 4.0,
    "2.0 * x - y": lambda x, y: 2.0 * x - y,
    "-x + y * y": lambda x, y: -x + y * y,
    "x / (y + 8.0)": lambda x, y: x / (y + 8.0),
    "2.0 / (x + 8.0)": lambda x, y: 2.0 / (x + 8.0),
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("expr", list(EXACT_EXPRESSIONS))
def test_operators_with_python_floats_keep_dtype(ops, dtype, expr):
    fn = EXACT_EXPRESSIONS[expr]
    a, b = data(32, seed=13), data(32, seed=14)
    got = fn(ops.from_numpy(a, dtype=dtype), ops.from_numpy(b, dtype=dtype))
    assert_same(ops, got, fn(a.astype(dtype), b.astype(dtype)), dtype=dtype)


INEXACT_EXPRESSIONS = {
    "x * 0.3": lambda x: x * 0.3,
    "0.7 * x + 0.1": lambda x: 0.7 * x + 0.1,
    "x / 0.7": lambda x: x / 0.7,
    "3.0 / (x + 8.0)": lambda x: 3.0 / (x + 8.0),
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_operators_with_inexact_python_floats(ops, dtype):
    a = data(64, seed=15, scale=3.0)
    for label, fn in INEXACT_EXPRESSIONS.items():
        got = fn(ops.from_numpy(a, dtype=dtype))
        assert ops.dtype_name(got) == dtype, label
        expected = fn(a.astype(dtype))
        err = np.abs(ops.to_numpy(got).astype(np.float64) - expected.astype(np.float64))
        if dtype == "float32" and label != "3.0 / (x + 8.0)":
            assert err.max() == 0, label  # the scalar becomes float32 everywhere: identical arithmetic
        else:
            # torch keeps the Python float in float32 for half arithmetic and rounds once, where
            # NumPy and MindSpore round the scalar to float16 first; and torch and MindSpore compute
            # `s / x` as `s * (1 / x)`, two roundings. Bound: 1 ulp of each result.
            assert (err <= np.spacing(np.abs(expected)).astype(np.float64)).all(), (label, err.max())
