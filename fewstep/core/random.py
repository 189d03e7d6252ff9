"""`fewstep.Generator`: seeded Gaussian noise on the host, the same numbers torch or mindone draw.

Two streams, chosen by name:

``stream="torch"`` (default)
    Reproduces ``torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)`` on
    PyTorch's CPU generator (checked against torch 2.13), including the generator state between
    draws, so a sequence of draws of different shapes stays in step with one ``torch.Generator``:

    * The engine is MT19937 seeded with ``init_genrand(seed & 0xffffffff)``; NumPy's legacy
      ``RandomState(int)`` seeding is the same function, and ``random_raw`` yields the raw 32-bit
      words torch's ``random()`` returns.
    * numel >= 16, float32: all uniforms first, ``u = (word & (2**24 - 1)) * 2**-24``; then per block
      of 16, for j < 8: ``r = sqrt(-2 log(1 - u[j]))``, ``theta = 2 pi u[j + 8]`` (float32),
      ``out[j] = r cos(theta)``, ``out[j + 8] = r sin(theta)``. When numel is not a multiple of 16 the
      last 16 outputs are recomputed from 16 further uniforms (numel + 16 words in all).
    * numel >= 16, float16 / bfloat16: the same float32 arithmetic, cast down, but torch 2.13 draws the
      uniforms block by block, so the 16 tail uniforms directly follow the full blocks
      (16 * (numel // 16) + 16 words when numel % 16 != 0). For multiples of 16 this is exactly the
      float32 stream cast down; otherwise the last 16 values and the generator state differ from it.
    * numel >= 16, float64: the same layout with 53-bit uniforms (two words each) and double maths.
    * numel < 16, any dtype: torch's scalar ``normal_distribution<double>``: ``u1, u2`` 53-bit from
      ``(w1 << 32) | w2``, ``r = sqrt(-2 log1p(-u2))``, ``theta = 2 pi u1``; returns ``r cos(theta)``
      and caches ``r sin(theta)`` in the generator for the next scalar draw. Values are rounded to
      float32 (then to float16/bfloat16) as torch's ``static_cast`` does.

    float32 values agree with torch to within ~5e-7 absolute: torch's vectorised log/sin/cos and
    NumPy's differ in the last bit for some elements. Double-path values agree exactly.

``stream="numpy"``
    Reproduces mindone's ``np.random.Generator(np.random.PCG64(seed)).standard_normal(shape)``
    (float64), converted as ``mindspore.tensor(x, dtype=...)`` converts: float64 -> float32 -> the
    target dtype (so float16 is ``x.astype(float32).astype(float16)``, which differs from a direct
    ``x.astype(float16)`` in about 1 element in 2**14 by double rounding).

bfloat16: NumPy has no bfloat16, so ``dtype="bfloat16"`` returns a **float32** array whose values are
bfloat16 numbers (the float32 stream rounded to nearest-even, as ``tensor.to(torch.bfloat16)`` does);
casting it to bfloat16 on any framework is exact.

A list of seeds gives one independent stream per batch item, as diffusers and mindone do with a list
of generators: ``randn(shape)`` needs ``shape[0] == len(seeds)`` and draws ``(1, *shape[1:])`` from
each stream, concatenated on axis 0. A list of one seed behaves like that single seed (as diffusers'
``randn_tensor`` treats a list of one generator).
"""

from __future__ import annotations

import copy
import math
import operator
import os
import struct
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from fewstep.core.ops import check_dtype

__all__ = ["Generator", "STREAMS"]

STREAMS = ("torch", "numpy")
_RANDN_DTYPES = ("float32", "float16", "bfloat16", "float64")
_MT_WORDS = 624              # MT19937's state words
_TORCH_STATE_BYTES = 5056    # torch's CPUGeneratorImplState: legacy POD (seed, left, seeded, next, 624 words,
#                              the double normal cache) then the float normal cache

_U64 = 1 << 64
_TWO_PI_F32 = np.float32(2.0 * math.pi)  # torch 2.13's kernel forms theta as a float32 product (checked)
_2_POW_M24 = np.float32(2.0 ** -24)
_2_POW_M53 = 2.0 ** -53
_MASK24 = np.uint32(0xFFFFFF)
_MASK21 = np.uint64(0x1FFFFF)  # 53 - 32 bits of the high word of a 64-bit draw
_SHIFT32 = np.uint64(32)

Seed = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------------
# helpers


def _as_int(value: Any, what: str) -> int:
    """An exact Python int from an int-like (int, numpy integer), refusing bool, float and str."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be an integer, got the bool {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {type(value).__name__} {value!r}.") from None


def _check_seed(value: Any, stream: str, what: str = "seed") -> int:
    seed = _as_int(value, what)
    if stream == "torch":
        # torch.Generator.manual_seed reads the seed as uint64, or, failing that, as int64 (two's
        # complement); anything outside [-2**63, 2**64) overflows there too.
        if not -(1 << 63) <= seed < _U64:
            raise ValueError(
                f"{what} {seed} is out of range for the torch stream: torch.Generator.manual_seed "
                f"accepts integers in [-2**63, 2**64)."
            )
    elif seed < 0:
        raise ValueError(
            f"{what} {seed} is negative; the numpy stream (np.random.PCG64) needs a non-negative integer."
        )
    return seed


def _random_seed() -> int:
    """A fresh 63-bit seed from OS entropy: valid for both streams and easy to write down."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def _shape_of(shape: Any) -> Tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    try:
        dims = tuple(_as_int(s, "shape entry") for s in shape)
    except TypeError:
        raise ValueError(f"shape must be an int or a sequence of ints, got {shape!r}.") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {dims} has a negative dimension.")
    return dims


def _dtype_name(dtype: Any) -> str:
    if not isinstance(dtype, str):
        try:
            dtype = np.dtype(dtype).name  # np.float16, np.dtype("float32"), ...
        except (TypeError, ValueError):
            dtype = str(dtype)  # torch.float16 -> "torch.float16", MindSpore Float16 -> "Float16"
    try:
        name = check_dtype(dtype.lower())
    except ValueError:
        name = None
    if name not in _RANDN_DTYPES:
        raise ValueError(f"randn draws floating-point noise; dtype {dtype!r} is not one of "
                         f"{', '.join(_RANDN_DTYPES)}.")
    return name


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32.

    This is what ``tensor.to(torch.bfloat16)`` and MindSpore's conversion do; NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    lsb = np.right_shift(bits, 16)
    np.bitwise_and(lsb, 1, out=lsb)
    lsb += np.uint32(0x7FFF)
    lsb += bits  # wraps only for NaN bit patterns, restored below
    np.bitwise_and(lsb, np.uint32(0xFFFF0000), out=lsb)
    out = lsb.view(np.float32)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = np.nan
    return out


def _from_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16)
    return round_to_bfloat16(x)


class _NoEntropy(ISeedSequence):
    """A seed sequence that costs nothing: MT19937 fills its key from it, then init_genrand overwrites
    the key. (A default MT19937() would first gather OS entropy and hash it through SeedSequence.)"""

    def generate_state(self, n_words, dtype=np.uint32):
        return np.zeros(n_words, dtype)


_NO_ENTROPY = _NoEntropy()
_FAST_SEEDING: Optional[bool] = None  # decided on first use: is the fast path init_genrand?


def _seeded_by_random_state(seed32: int) -> np.random.MT19937:
    legacy = np.random.RandomState(seed32)  # legacy int seeding is init_genrand
    bit_generator = getattr(legacy, "_bit_generator", None)
    if isinstance(bit_generator, np.random.MT19937):
        return bit_generator
    # public API only: copy the seeded key into a fresh MT19937
    _, key, pos = legacy.get_state(legacy=True)[:3]
    bit_generator = np.random.MT19937(_NO_ENTROPY)
    bit_generator.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}
    return bit_generator


def _new_mt19937(seed32: int) -> np.random.MT19937:
    """An MT19937 bit generator seeded with init_genrand(seed32), as torch's CPU generator is.

    NumPy's legacy seeding (``RandomState(int)``) is init_genrand; its ``MT19937(seed)`` goes through
    SeedSequence instead and gives other numbers. The fast path calls the legacy seeding directly on
    an MT19937 built without entropy (3x cheaper than building a RandomState); the first call checks
    it against RandomState and falls back for good if this NumPy behaves differently."""
    global _FAST_SEEDING
    if _FAST_SEEDING is not False:
        try:
            bit_generator = np.random.MT19937(_NO_ENTROPY)
            bit_generator._legacy_seeding(seed32)
        except (AttributeError, TypeError, ValueError):
            _FAST_SEEDING = False
        else:
            if _FAST_SEEDING is None:
                probe = _seeded_by_random_state(seed32)
                _FAST_SEEDING = bool(np.array_equal(probe.state["state"]["key"],
                                                    bit_generator.state["state"]["key"]))
            if _FAST_SEEDING:
                return bit_generator
    return _seeded_by_random_state(seed32)


def _uniform53(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """torch's uniform_real<double>: ((hi << 32 | lo) & (2**53 - 1)) * 2**-53, from raw words."""
    v = np.bitwise_and(hi, _MASK21)
    np.left_shift(v, _SHIFT32, out=v)
    np.bitwise_or(v, lo, out=v)
    u = v.astype(np.float64)
    u *= _2_POW_M53
    return u


def _halves(u: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split consecutive blocks of 16 into the first 8 and the last 8 of every block (contiguous).

    Viewing each run of 8 elements as one opaque item makes this two 1-D strided copies, much
    faster than slicing a (k, 16) array, whose 8-element inner loops are dominated by overhead."""
    block = np.dtype((np.void, 8 * u.itemsize))
    v = u.view(block)
    return np.ascontiguousarray(v[0::2]).view(u.dtype), np.ascontiguousarray(v[1::2]).view(u.dtype)


def _interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Inverse of _halves: blocks of 16 made of 8 from `first` then 8 from `second`."""
    block = np.dtype((np.void, 8 * first.itemsize))
    out = np.empty(2 * first.size, first.dtype)
    v = out.view(block)
    v[0::2] = first.view(block)
    v[1::2] = second.view(block)
    return out


def _box_muller16_f32(u: np.ndarray) -> np.ndarray:
    """torch's normal_fill_16 over consecutive blocks of 16 float32 uniforms (len(u) % 16 == 0):
    out[j] = r cos(theta), out[j + 8] = r sin(theta), r = sqrt(-2 log(1 - u[j])), theta = 2 pi u[j + 8]."""
    first, theta = _halves(u)
    # 1 - u is exact; the log is taken in double and rounded to float32 (the correctly rounded float32
    # log), which agrees with torch's kernel more often than NumPy's float32 log does.
    r = np.subtract(1.0, first, dtype=np.float64)
    np.log(r, out=r)
    r *= -2.0
    r = r.astype(np.float32)
    np.sqrt(r, out=r)
    theta *= _TWO_PI_F32  # float32 product, as torch's kernel computes it
    cos = np.cos(theta)
    cos *= r
    sin = np.sin(theta, out=theta)
    sin *= r
    return _interleave(cos, sin)


def _box_muller16_f64(u: np.ndarray) -> np.ndarray:
    """normal_fill_16 in double precision (float64 tensors)."""
    first, theta = _halves(u)
    r = np.subtract(1.0, first, out=first)
    np.log(r, out=r)
    r *= -2.0
    np.sqrt(r, out=r)
    theta *= 2.0 * math.pi
    cos = np.cos(theta)
    cos *= r
    sin = np.sin(theta, out=theta)
    sin *= r
    return _interleave(cos, sin)


# --------------------------------------------------------------------------------------------------
# one stream each


class _TorchStream:
    """One torch CPU generator: MT19937 words plus the cached second normal of the double path."""

    __slots__ = ("bits", "cache")

    def __init__(self, seed: int):
        self.bits = _new_mt19937(seed & 0xFFFFFFFF)
        self.cache: Optional[float] = None

    # state ----------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        state = self.bits.state["state"]
        return {"key": np.array(state["key"], dtype=np.uint32), "pos": int(state["pos"]),
                "normal_cache": self.cache}

    def set_state(self, state: dict) -> None:
        key = np.asarray(state["key"], dtype=np.uint32)
        if key.shape != (624,):
            raise ValueError("A torch-stream state needs a 624-word MT19937 'key'.")
        self.bits.state = {"bit_generator": "MT19937",
                           "state": {"key": key.copy(), "pos": int(state["pos"])}}
        cache = state.get("normal_cache")
        self.cache = None if cache is None else float(cache)

    # draws ----------------------------------------------------------------------------------------
    def _uniforms24(self, n: int) -> np.ndarray:
        words = self.bits.random_raw(n).astype(np.uint32)
        np.bitwise_and(words, _MASK24, out=words)
        u = words.view(np.int32).astype(np.float32)  # < 2**24: exact, and int32 converts fastest
        u *= _2_POW_M24
        return u

    def _uniforms53(self, n: int) -> np.ndarray:
        words = self.bits.random_raw(2 * n)
        return _uniform53(words[0::2], words[1::2])

    def _scalar_path(self, n: int) -> np.ndarray:
        """n draws of torch's normal_distribution<double>, cache included (float64)."""
        out = np.empty(n, np.float64)
        if n == 0:
            return out
        start = 0
        if self.cache is not None:
            out[0] = self.cache
            self.cache = None
            start = 1
        m = n - start
        pairs = (m + 1) // 2
        if pairs:
            words = self.bits.random_raw(4 * pairs).reshape(pairs, 4)
            u1 = _uniform53(words[:, 0], words[:, 1])
            u2 = _uniform53(words[:, 2], words[:, 3])
            r = np.sqrt(-2.0 * np.log1p(-u2))
            theta = (2.0 * math.pi) * u1
            values = np.empty((pairs, 2), np.float64)
            values[:, 0] = r * np.cos(theta)
            values[:, 1] = r * np.sin(theta)
            values = values.reshape(-1)
            out[start:] = values[:m]
            if m % 2:
                self.cache = float(values[m])
        return out

    def randn(self, shape: Tuple[int, ...], dtype: str) -> np.ndarray:
        n = math.prod(shape)
        if n < 16:
            values = self._scalar_path(n)
            if dtype != "float64":
                values = _from_float32(values.astype(np.float32), dtype)
            return values.reshape(shape)
        full = n - n % 16
        tail = n % 16 != 0
        if dtype == "float64":
            u = self._uniforms53(n + 16 * tail)
            fill = _box_muller16_f64
        elif dtype == "float32":
            u = self._uniforms24(n + 16 * tail)
            fill = _box_muller16_f32
        else:  # float16 / bfloat16: tail uniforms follow the full blocks directly
            u = self._uniforms24(full + 16 * tail)
            fill = _box_muller16_f32
        if tail:
            # one pass over the full blocks plus the 16 tail uniforms, then move the tail into place
            blocks = u if len(u) == full + 16 else np.concatenate((u[:full], u[n:]))
            values = fill(blocks)
            values[n - 16:n] = values[full:].copy()
            values = values[:n]
        else:
            values = fill(u)
        if dtype not in ("float32", "float64"):
            values = _from_float32(values, dtype)
        return values.reshape(shape)


class _NumpyStream:
    """mindone's generator: np.random.Generator(np.random.PCG64(seed))."""

    __slots__ = ("generator",)

    def __init__(self, seed: int):
        self.generator = np.random.Generator(np.random.PCG64(seed))

    def get_state(self) -> dict:
        return copy.deepcopy(self.generator.bit_generator.state)

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
            raise ValueError("A numpy-stream state is a PCG64 bit-generator state dict.")
        self.generator.bit_generator.state = copy.deepcopy(state)

    def randn(self, shape: Tuple[int, ...], dtype: str) -> np.ndarray:
        values = self.generator.standard_normal(shape)
        if dtype == "float64":
            return values
        # mindspore.tensor(float64 array, dtype=...) converts through float32
        return _from_float32(values.astype(np.float32), dtype)


_STREAM_CLASSES = {"torch": _TorchStream, "numpy": _NumpyStream}


# --------------------------------------------------------------------------------------------------


class Generator:
    """Seeded standard-normal noise as NumPy arrays, reproducing torch's CPU generator or mindone's.

    ``Generator(seed=None, stream="torch")``: ``seed`` is an int, a list of ints (one stream per batch
    item) or None (a random seed from OS entropy, kept in ``.seed`` so the result can be made again).
    ``stream`` is "torch" (``torch.randn`` with a CPU ``torch.Generator().manual_seed(seed)``) or
    "numpy" (mindone's ``np.random.Generator(np.random.PCG64(seed))``). See the module docstring for
    the exact algorithms, dtype handling and the bfloat16 convention (float32 arrays of bfloat16
    values).
    """

    def __init__(self, seed: Optional[Seed] = None, stream: str = "torch"):
        if not isinstance(stream, str) or stream not in STREAMS:
            raise ValueError(f"Unknown stream {stream!r}; choose one of {', '.join(map(repr, STREAMS))} "
                             f"('torch' reproduces torch.randn on a CPU torch.Generator, 'numpy' reproduces "
                             f"mindone's np.random.Generator(np.random.PCG64(seed))).")
        self.stream = stream
        self.manual_seed(seed)

    # seeding ------------------------------------------------------------------------------------------
    def manual_seed(self, seed: Optional[Seed] = None) -> "Generator":
        """Reseed (a list for one stream per batch item; None for a fresh random seed); returns self."""
        if seed is None:
            seed = _random_seed()
        if isinstance(seed, (list, tuple)):
            if not seed:
                raise ValueError("seed is an empty list; give one seed per batch item, or a single int.")
            seeds = [_check_seed(s, self.stream, f"seed[{i}]") for i, s in enumerate(seed)]
            self.seed: Seed = list(seeds)
        elif isinstance(seed, (str, bytes, np.ndarray)):
            raise ValueError(f"seed must be an int, a list of ints or None, got "
                             f"{type(seed).__name__} {seed!r}.")
        else:
            try:
                seeds = [_check_seed(seed, self.stream)]
            except ValueError as err:
                if "must be an integer" in str(err):
                    raise ValueError(f"seed must be an int, a list of ints or None, got "
                                     f"{type(seed).__name__} {seed!r}.") from None
                raise
            self.seed = seeds[0]
        self._batched = isinstance(self.seed, list)
        cls = _STREAM_CLASSES[self.stream]
        self._streams: List[Any] = [cls(s) for s in seeds]
        return self

    def initial_seed(self) -> Seed:
        """The seed as torch.Generator.initial_seed reports it (torch stream: modulo 2**64)."""
        def one(s: int) -> int:
            return s % _U64 if self.stream == "torch" else s
        return [one(s) for s in self.seed] if self._batched else one(self.seed)

    @classmethod
    def from_torch(cls, generator) -> "Generator":
        """A torch-stream generator that continues where a CPU `torch.Generator` is now (after whatever it has
        drawn), e.g. to run a torch test's call on MindSpore with the same noise. Reads `generator.get_state()`
        (torch's 5056-byte CPU state: seed, MT19937 words and position, the cached normal); imports no torch."""
        raw = np.asarray(generator.get_state(), dtype=np.uint8).tobytes()
        if len(raw) != _TORCH_STATE_BYTES:
            raise ValueError(f"Not a CPU torch.Generator state ({len(raw)} bytes, {_TORCH_STATE_BYTES} expected); "
                             f"use a generator on the CPU, or fewstep.Generator(seed).")
        seed, left, _, position = struct.unpack_from("<QiiQ", raw, 0)
        words = np.frombuffer(raw, dtype="<u8", count=_MT_WORDS, offset=24).astype(np.uint32)
        _, cached, _ = struct.unpack_from("<ddd", raw, 24 + 8 * _MT_WORDS)
        (cache_valid,) = struct.unpack_from("<i", raw, 48 + 8 * _MT_WORDS)
        made = cls(int(seed))
        # torch's MT19937 regenerates when `left` falls to 0; NumPy's when `pos` reaches 624
        made._streams[0].set_state({"key": words, "pos": _MT_WORDS if left == 1 else int(position),
                                    "normal_cache": float(cached) if cache_valid else None})
        return made

    # state --------------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """A picklable snapshot (plain dict) of every stream, cached normal included."""
        return {"stream": self.stream, "seed": copy.copy(self.seed),
                "states": [s.get_state() for s in self._streams]}

    def set_state(self, state: dict) -> "Generator":
        """Restore a snapshot from get_state(); the next draws repeat exactly. Returns self."""
        if not isinstance(state, dict) or not {"stream", "seed", "states"} <= set(state):
            raise ValueError("set_state expects the dict returned by Generator.get_state().")
        if state["stream"] != self.stream:
            raise ValueError(f"This state is from a {state['stream']!r}-stream generator; this generator "
                             f"uses the {self.stream!r} stream.")
        seed = state["seed"]
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
        if len(state["states"]) != len(seeds):
            raise ValueError("Malformed state: the number of stream states does not match the seeds.")
        cls = _STREAM_CLASSES[self.stream]
        streams = [cls(s) for s in seeds]
        for stream, sub in zip(streams, state["states"]):
            stream.set_state(sub)
        self.seed = list(seeds) if isinstance(seed, (list, tuple)) else seed
        self._batched = isinstance(self.seed, list)
        self._streams = streams
        return self

    # drawing ------------------------------------------------------------------------------------------
    def randn(self, shape: Union[int, Sequence[int]], dtype: Any = "float32") -> np.ndarray:
        """Standard normal noise of `shape`, as torch.randn / mindone's randn_tensor would draw it.

        dtype: "float32" (default), "float16", "bfloat16" (returned as float32 holding bfloat16
        values) or "float64". With a list of seeds, shape[0] must equal the number of seeds."""
        shape = _shape_of(shape)
        dtype = _dtype_name(dtype)
        if not self._batched or len(self._streams) == 1:
            return self._streams[0].randn(shape, dtype)
        if not shape or shape[0] != len(self._streams):
            raise ValueError(
                f"This generator holds {len(self._streams)} seeds (one per batch item), so randn needs "
                f"shape[0] == {len(self._streams)}; got shape {shape}. Use a single seed to draw any shape."
            )
        item = (1,) + shape[1:]
        return np.concatenate([s.randn(item, dtype) for s in self._streams], axis=0)

    def __repr__(self) -> str:
        return f"Generator(seed={self.seed!r}, stream={self.stream!r})"
