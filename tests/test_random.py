"""fewstep.Generator against the libraries it reproduces.

Stream "torch" is compared with torch.randn on CPU torch.Generators (one generator drawing the same
sequence of shapes, so the generator state, the cached normal of torch's scalar path included, must
evolve exactly as torch's does); stream "numpy" with mindone's np.random.Generator(PCG64(seed)).

Tolerances, and why:
* float32: atol 1e-6. torch's CPU kernel evaluates log/sin/cos with its own vectorised routines and
  NumPy with others; they differ in the last bit for a few percent of elements (|r cos| < 6, so an
  ulp is < 5e-7). Everything else (words, uniforms, layout, Box-Muller pairing) is exact, and the
  scalar (numel < 16) path is double precision, so it agrees exactly after rounding.
* float16/bfloat16: both sides round the float32 value to the low-precision type. Where the float32
  values differ by that last bit, the rounding can (rarely, ~1 in 2**13 elements for float16) fall on
  different sides of a rounding boundary: then they differ by exactly 1 ulp of float16/bfloat16.
  Nowhere else may they differ.
* float64: atol 1e-12 (NumPy's and glibc's double log/sin/cos differ by an ulp, ~1e-16).
"""

from __future__ import annotations

import ast
import copy
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from fewstep.core.random import Generator, round_to_bfloat16

F32_ATOL = 1e-6  # torch's vectorised log/sin/cos vs NumPy's: last-bit differences, |x| < 6 -> < 5e-7
F64_ATOL = 1e-12  # glibc vs NumPy double transcendental functions: ~1 ulp of double

SMALL_SEEDS = [0, 1, 42, 1234, 2**31 - 1]
BIG_SEEDS = [2**32, 2**32 + 5, 2**40 + 3, 2**63 + 11, 2**64 - 1]
NEGATIVE_SEEDS = [-1, -5, -(2**40), -(2**63)]


# --------------------------------------------------------------------------------------------------
# helpers


def _torch():
    import torch

    return torch


def _torch_randn(tg, shape, dtype):
    """torch.randn with a torch.Generator, as a float64 NumPy array (bf16 and fp16 exactly widened)."""
    torch = _torch()
    return torch.randn(shape, generator=tg, dtype=getattr(torch, dtype)).double().numpy()


def _ulp(values: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing of `dtype` at |values| (values already representable in dtype)."""
    mag = np.abs(values)
    if dtype == "float16":
        return np.spacing(mag.astype(np.float16)).astype(np.float64)
    # bfloat16 keeps 8 of float32's 24 significant bits: its spacing is 2**16 float32 spacings
    return np.spacing(mag.astype(np.float32)).astype(np.float64) * 65536.0


def _assert_matches(ours: np.ndarray, theirs: np.ndarray, dtype: str, f32_differs=None, what=""):
    """Compare one draw with torch's under the tolerances in the module docstring.

    f32_differs: for float16/bfloat16, a boolean mask of where the float32 streams (same state) differ;
    when given, a low-precision mismatch is only allowed there."""
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == theirs.shape, what
    if ours.size == 0:
        return
    if dtype == "float32":
        # last-bit differences of log/sin/cos between torch's kernel and NumPy; see F32_ATOL
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=F32_ATOL, err_msg=what)
    elif dtype == "float64":
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=F64_ATOL, err_msg=what)
    else:
        # rounding a value that differs by a float32 ulp can land on either side of a float16/
        # bfloat16 rounding boundary: at most 1 ulp of the low-precision type, and only rarely
        diff = ours != theirs
        if diff.any():
            ulp = np.maximum(_ulp(ours[diff], dtype), _ulp(theirs[diff], dtype))
            ulps = np.abs(ours - theirs)[diff] / ulp
            assert ulps.max() <= 1.0, f"{what}: {dtype} values differ by {ulps.max()} ulp"
            assert diff.mean() <= 2e-3, f"{what}: {diff.sum()} of {diff.size} {dtype} values differ"
            if f32_differs is not None:
                assert not (diff & ~f32_differs).any(), \
                    f"{what}: {dtype} differs where the float32 streams agree"


def _random_shape(rng: random.Random, kind: str):
    if kind == "small":  # numel < 16: torch's double-precision scalar path with its cached normal
        return rng.choice([(), (1,), (3,), (2, 3), (rng.randrange(1, 16),), (1, 3, 5), (0,), (2, 0, 4)])
    if kind == "ragged":  # 16 <= numel <= 100, not a multiple of 16: recomputed tail block
        while True:
            n = rng.randrange(17, 101)
            if n % 16:
                return rng.choice([(n,), (1, n)]) if n % 2 else (2, n // 2)
    if kind == "multiple":
        return rng.choice([(16,), (4, 4, 2), (2, 4, 8, 8), (4, 3, 8, 8), (1, 4, 16, 16)])
    return (1, 4, 128, 128)


# --------------------------------------------------------------------------------------------------
# stream "torch" against torch


def _differential_cases():
    rng = random.Random(20240517)
    cases = []
    for i in range(64):
        seed = rng.choice([rng.choice(SMALL_SEEDS), rng.randrange(2**16),
                           rng.choice(BIG_SEEDS), rng.randrange(2**32, 2**64),
                           rng.choice(NEGATIVE_SEEDS), -rng.randrange(1, 2**63)])
        draws = []
        for _ in range(rng.randrange(1, 6)):
            kind = rng.choices(["small", "ragged", "multiple", "large"], weights=[4, 4, 3, 0.4])[0]
            dtype = rng.choices(["float32", "float16", "bfloat16", "float64"], weights=[5, 2, 2, 1])[0]
            draws.append((_random_shape(rng, kind), dtype))
        cases.append(pytest.param(seed, draws, id=f"case{i}"))
    return cases


@pytest.mark.torch
@pytest.mark.parametrize("seed,draws", _differential_cases())
def test_torch_stream_random_sequences(seed, draws):
    """One fewstep.Generator and one torch.Generator draw the same interleaved sequence of shapes and
    dtypes; every draw must match, so the generator state must advance exactly as torch's does."""
    torch = _torch()
    ours = Generator(seed)
    theirs = torch.Generator().manual_seed(seed)
    for k, (shape, dtype) in enumerate(draws):
        got = ours.randn(shape, dtype=dtype)
        assert got.shape == shape
        assert got.dtype == {"float16": np.float16, "float64": np.float64}.get(dtype, np.float32)
        _assert_matches(got, _torch_randn(theirs, shape, dtype), dtype, what=f"draw {k} {shape} {dtype}")


@pytest.mark.torch
@pytest.mark.parametrize("seed", [0, 7, 2**32 + 7, -3])
def test_torch_stream_large_latent(seed):
    torch = _torch()
    shape = (1, 4, 128, 128)
    got = Generator(seed).randn(shape)
    want = _torch_randn(torch.Generator().manual_seed(seed), shape, "float32")
    _assert_matches(got, want, "float32", what=str(seed))
    # and the next draw (a small one, then a ragged one) is still in step
    g, tg = Generator(seed), torch.Generator().manual_seed(seed)
    for shape in [(1, 4, 128, 128), (3,), (5, 7), (1,)]:
        _assert_matches(g.randn(shape), _torch_randn(tg, shape, "float32"), "float32", what=str(shape))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (1, 4, 128, 128), (37,), (2, 4, 9, 9)])
def test_low_precision_differs_only_where_float32_does(dtype, shape):
    """float16/bfloat16 draws may differ from torch's only where the float32 streams differ (an ulp
    of float32 moved the rounding). The full blocks of 16 are the float32 stream cast down."""
    torch = _torch()
    seed = 2024
    got = Generator(seed).randn(shape, dtype=dtype)
    want = _torch_randn(torch.Generator().manual_seed(seed), shape, dtype)
    ours32 = Generator(seed).randn(shape).ravel()
    theirs32 = _torch_randn(torch.Generator().manual_seed(seed), shape, "float32").ravel()
    full = ours32.size - ours32.size % 16  # float32 and half layouts share the full blocks
    f32_differs = np.ones(ours32.size, bool)
    f32_differs[:full] = ours32[:full] != theirs32[:full]
    _assert_matches(got.ravel(), want.ravel(), dtype, f32_differs=f32_differs, what=f"{shape} {dtype}")


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_ragged_layout(dtype):
    """torch 2.13 draws float16/bfloat16 block by block: for numel % 16 != 0 the tail uses the 16
    uniforms right after the full blocks (not after numel), and fewer words are consumed. So for those
    shapes the result is not the float32 draw cast down; fewstep follows torch."""
    torch = _torch()
    shape = (2, 10)
    got = Generator(11).randn(shape, dtype=dtype)
    cast = Generator(11).randn(shape)
    cast = cast.astype(np.float16) if dtype == "float16" else round_to_bfloat16(cast)
    assert not np.array_equal(got, cast)
    g, tg = Generator(11), torch.Generator().manual_seed(11)
    for shape, dt in [((2, 10), dtype), ((3,), "float32"), ((33,), dtype), ((20,), "float32")]:
        _assert_matches(g.randn(shape, dtype=dt), _torch_randn(tg, shape, dt), dt, what=f"{shape} {dt}")


@pytest.mark.torch
def test_known_values_and_scalar_cache():
    """Well-known values after torch.manual_seed(0): randn(4, 4) and randn(3); then odd-sized
    scalar-path draws, which leave a cached normal in the generator that the next scalar draw must
    use first."""
    torch = _torch()
    np.testing.assert_allclose(Generator(0).randn((4, 4))[0], [-1.1258, -1.1524, -0.2506, -0.4339],
                               atol=1e-4)
    np.testing.assert_allclose(Generator(0).randn(3), [1.5410, -0.2934, -2.1788], atol=1e-4)
    g, tg = Generator(5), torch.Generator().manual_seed(5)
    for shape in [(3,), (1,), (5,), (2, 2), (16,), (1,), (7,)]:
        got = g.randn(shape)
        want = _torch_randn(tg, shape, "float32")
        np.testing.assert_array_equal(got, want.astype(np.float32))  # double path: exact after rounding


@pytest.mark.torch
@pytest.mark.parametrize("seed", [3, 2**32 + 3, 2**63 + 3, -1, -(2**63), 2**64 - 1])
def test_seed_conventions_match_torch(seed):
    """torch seeds MT19937 with the low 32 bits of the seed read as uint64 (negative seeds: two's
    complement), and initial_seed() reports seed mod 2**64."""
    torch = _torch()
    tg = torch.Generator().manual_seed(seed)
    g = Generator(seed)
    assert g.initial_seed() == tg.initial_seed()
    assert g.seed == seed
    _assert_matches(g.randn((2, 8)), _torch_randn(tg, (2, 8), "float32"), "float32")
    same_low_bits = Generator(seed % 2**32)
    np.testing.assert_array_equal(Generator(seed).randn(20), same_low_bits.randn(20))


@pytest.mark.torch
def test_seed_list_matches_list_of_torch_generators():
    torch = _torch()
    seeds = [1, 2**33, -7]
    g = Generator(seeds)
    tgs = [torch.Generator().manual_seed(s) for s in seeds]
    for shape, dtype in [((3, 4, 8, 8), "float32"), ((3, 5), "float32"), ((3, 4, 7), "float16"),
                         ((3,), "float32"), ((3, 4, 8, 8), "bfloat16")]:
        want = np.concatenate([_torch_randn(t, (1,) + shape[1:], dtype) for t in tgs], axis=0)
        _assert_matches(g.randn(shape, dtype=dtype), want, dtype, what=f"{shape} {dtype}")
    assert g.initial_seed() == [t.initial_seed() for t in tgs]


@pytest.mark.torch
def test_seed_list_matches_diffusers_randn_tensor():
    torch = _torch()
    from diffusers.utils.torch_utils import randn_tensor

    seeds = [10, 20]
    tgs = [torch.Generator().manual_seed(s) for s in seeds]
    g = Generator(seeds)
    for _ in range(2):  # initial latents, then one step's noise
        want = randn_tensor((2, 4, 16, 16), generator=tgs, dtype=torch.float32).double().numpy()
        _assert_matches(g.randn((2, 4, 16, 16)), want, "float32")
    # a list of one generator is a single generator to diffusers, whatever the batch size
    want = randn_tensor((2, 4, 8, 8), generator=[torch.Generator().manual_seed(5)]).double().numpy()
    _assert_matches(Generator([5]).randn((2, 4, 8, 8)), want, "float32")


# --------------------------------------------------------------------------------------------------
# stream "numpy" against NumPy / mindone


@pytest.mark.parametrize("seed", [0, 42, 2**40 + 1, 2**70])
def test_numpy_stream_matches_pcg64(seed):
    g = Generator(seed, stream="numpy")
    ref = np.random.Generator(np.random.PCG64(seed))
    for shape in [(2, 4, 8, 8), (3,), (), (1, 4, 17, 5)]:
        np.testing.assert_array_equal(g.randn(shape, dtype="float64"), ref.standard_normal(shape))
    for shape, dtype in [((2, 4, 8, 8), "float32"), ((9,), "float16"), ((4, 33), "bfloat16")]:
        x = ref.standard_normal(shape).astype(np.float32)  # MindSpore converts float64 via float32
        want = {"float32": x, "float16": x.astype(np.float16), "bfloat16": round_to_bfloat16(x)}[dtype]
        got = g.randn(shape, dtype=dtype)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_numpy_stream_seed_list():
    seeds = [3, 4, 5]
    g = Generator(seeds, stream="numpy")
    refs = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
    for _ in range(2):
        want = np.concatenate([r.standard_normal((1, 4, 6, 6)) for r in refs]).astype(np.float32)
        np.testing.assert_array_equal(g.randn((3, 4, 6, 6)), want)


@pytest.mark.mindspore
def test_numpy_stream_matches_mindone_randn_tensor():
    """mindone's randn_tensor converts the float64 draw with mindspore.tensor(x, dtype): through
    float32, so float16 is x.astype(float32).astype(float16) (a direct astype differs, rarely)."""
    import mindspore as ms
    from mindone.diffusers.utils.mindspore_utils import randn_tensor

    shape = (2, 4, 64, 64)
    for dtype, ms_dtype in [("float32", ms.float32), ("float16", ms.float16), ("bfloat16", ms.bfloat16)]:
        want = randn_tensor(shape, generator=np.random.Generator(np.random.PCG64(9)), dtype=ms_dtype)
        got = Generator(9, stream="numpy").randn(shape, dtype=dtype)
        np.testing.assert_array_equal(got.astype(np.float32), want.float().asnumpy())
    gens = [np.random.Generator(np.random.PCG64(s)) for s in (1, 2)]
    want = randn_tensor((2, 4, 8, 8), generator=gens, dtype=ms.float32).asnumpy()
    np.testing.assert_array_equal(Generator([1, 2], stream="numpy").randn((2, 4, 8, 8)), want)


# --------------------------------------------------------------------------------------------------
# state


@pytest.mark.parametrize("stream", ["torch", "numpy"])
@pytest.mark.parametrize("seed", [77, [1, 2]])
def test_state_round_trip_repeats_draws(stream, seed):
    g = Generator(seed, stream=stream)
    g.randn((2, 3))  # odd numel < 16 on the torch stream: leaves a cached normal behind
    state = g.get_state()
    snapshot = pickle.dumps(state)
    first = [g.randn(s) for s in [(2, 1), (2, 40), (2, 4, 8, 8), (2, 5)]]
    assert pickle.dumps(state) == snapshot  # a snapshot: later draws do not change it
    for restored in (state, pickle.loads(pickle.dumps(state)), copy.deepcopy(state)):
        other = Generator(999 if stream == "torch" else 5, stream=stream).set_state(restored)
        assert other.seed == seed
        again = [other.randn(s) for s in [(2, 1), (2, 40), (2, 4, 8, 8), (2, 5)]]
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
    g.set_state(state)
    np.testing.assert_array_equal(g.randn((2, 1)), first[0])


def test_cached_normal_is_part_of_the_state():
    g = Generator(3)
    g.randn(1)
    state = g.get_state()
    assert state["states"][0]["normal_cache"] is not None
    a = g.randn(1)
    b = Generator(3).set_state(state).randn(1)
    np.testing.assert_array_equal(a, b)


def test_manual_seed_resets_and_returns_self():
    g = Generator(5)
    a = g.randn((2, 9))
    g.randn(3)
    assert g.manual_seed(5) is g
    np.testing.assert_array_equal(g.randn((2, 9)), a)
    g.manual_seed([1, 2])
    assert g.seed == [1, 2] and g.randn((2, 3)).shape == (2, 3)


def test_random_seed_is_reported_and_reproducible():
    g = Generator()
    assert isinstance(g.seed, int) and g.initial_seed() == g.seed
    np.testing.assert_array_equal(g.randn(40), Generator(g.seed).randn(40))
    assert Generator().seed != Generator().seed
    h = Generator(stream="numpy")
    np.testing.assert_array_equal(h.randn(5), Generator(h.seed, stream="numpy").randn(5))


def test_repr_shows_seed_and_stream():
    assert repr(Generator(12)) == "Generator(seed=12, stream='torch')"
    assert repr(Generator([1, 2], stream="numpy")) == "Generator(seed=[1, 2], stream='numpy')"


def test_dtype_spellings():
    g = Generator(1)
    assert g.randn(20, dtype=np.float16).dtype == np.float16
    assert g.randn(20, dtype="half").dtype == np.float16
    assert g.randn(20, dtype=np.dtype("float64")).dtype == np.float64
    b = g.randn(40, dtype="bfloat16")
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, round_to_bfloat16(b))  # values are bfloat16 numbers


def test_round_to_bfloat16_ties_to_even():
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(round_to_bfloat16(x)[:5], [1.0, 1 + 2**-6, 1 + 2**-7, -1.0, np.inf])
    assert np.isnan(round_to_bfloat16(x)[5])


# --------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("seed,match", [
    (1.5, "must be an int"), ("3", "must be an int"), (True, "bool"), (b"1", "must be an int"),
    (np.arange(3), "must be an int"), ([], "empty list"), ([1, 2.0], r"seed\[1\]"),
    (2**64, "out of range"), (-(2**63) - 1, "out of range"),
])
def test_bad_seeds(seed, match):
    with pytest.raises(ValueError, match=match):
        Generator(seed)


def test_negative_seed_on_numpy_stream():
    with pytest.raises(ValueError, match="non-negative"):
        Generator(-1, stream="numpy")


@pytest.mark.parametrize("stream", ["Torch", "mt19937", "", None])
def test_bad_stream_names_the_choices(stream):
    with pytest.raises(ValueError, match="'torch', 'numpy'"):
        Generator(0, stream=stream)


def test_seed_list_needs_matching_batch():
    g = Generator([1, 2, 3])
    with pytest.raises(ValueError, match=r"shape\[0\] == 3"):
        g.randn((2, 4))
    with pytest.raises(ValueError, match=r"shape\[0\] == 3"):
        g.randn(())


@pytest.mark.parametrize("dtype", ["int32", "float8", object])
def test_bad_dtype(dtype):
    with pytest.raises(ValueError, match="float32"):
        Generator(0).randn(3, dtype=dtype)


def test_bad_shape_and_state():
    with pytest.raises(ValueError, match="negative"):
        Generator(0).randn((2, -1))
    with pytest.raises(ValueError, match="stream"):
        Generator(0).set_state(Generator(0, stream="numpy").get_state())
    with pytest.raises(ValueError, match="get_state"):
        Generator(0).set_state({"key": 1})


@pytest.mark.torch
def test_zero_size_draws_consume_nothing():
    torch = _torch()
    g, tg = Generator(8), torch.Generator().manual_seed(8)
    for shape in [(0,), (3,), (2, 0, 5), (1,), (0, 16)]:
        _assert_matches(g.randn(shape), _torch_randn(tg, shape, "float32"), "float32", what=str(shape))


def test_core_module_imports_no_framework():
    tree = ast.parse(Path(__import__("fewstep.core.random", fromlist=["x"]).__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"torch", "mindspore", "mindone", "diffusers"}, names


@pytest.mark.torch
@pytest.mark.parametrize("drawn", [0, 1, 5, 623, 624, 3000])
def test_from_torch_continues_a_used_torch_generator(drawn):
    """After any number of draws (both the MT19937 position and the cached normal), the next draws of every
    size path equal torch's."""
    torch = _torch()
    tg = torch.Generator().manual_seed(11)
    if drawn:
        torch.randn((drawn,), generator=tg)
    g = Generator.from_torch(tg)
    assert g.initial_seed() == 11
    for shape in [(1, 4, 32, 32), (3,), (1,), (20,)]:
        _assert_matches(g.randn(shape), _torch_randn(tg, shape, "float32"), "float32", what=f"{drawn} {shape}")


def test_from_torch_refuses_other_states():
    class Fake:
        def get_state(self):
            return np.zeros(16, np.uint8)

    with pytest.raises(ValueError, match="Not a CPU torch.Generator state"):
        Generator.from_torch(Fake())
