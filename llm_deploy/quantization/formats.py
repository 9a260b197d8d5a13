"""Quantization formats: the names users type, and how each packs one [out, in] weight.

A *packing* says which arrays replace one weight of shape (N, K) (K, the reduction axis, last):
their names (suffixes), shapes and dtypes. The quantize pass reads it to retype the model's
parameters; the converter (pack.py, gguf_blocks.py) writes arrays of exactly those specs; the
kernels (compiler/ops/lower_quantized.py) read them. One definition, three users.

    q0f32      float32 weights, as the model has them (no rewrite)
    q0f16      float16 weights, widened to float32 in the kernels
    q4f16_1    4-bit, groups of 32 along K, symmetric, a float16 scale per group (MLC-LLM's)
    q4f32_1    the same with float32 scales
    q8f16_1    8-bit, groups of 32, symmetric, float16 scales
    gguf       each tensor in its GGUF file's own block format (Q4_0, Q4_1, Q8_0, K-quants, F16, F32)

Group packings follow MLC-LLM: w ~= (q - max_int) * scale with max_int = 2**(bits-1) - 1 and
q in [0, 2**bits - 1], 32 // bits values per uint32 word, value k of a word at bits
[bits*k, bits*(k+1)). Activations stay float32 on the CPU: the "f16" is the scales' dtype.
MLC-LLM rounds each weight to nearest with scale = max|w| / max_int, so its codes stay in
[0, 2 * max_int] (15 of the 16 4-bit levels; `pack.group_quantize` does the same). The q4 formats
here instead choose codes and scales by AWQ scaling + GPTQ on a calibration text (calibrated.py),
and use all 16 levels the decoding gives, (q - max_int) in [-max_int, max_int + 1], each group's
scale signed so the extra level falls on its largest weight's side, as llama.cpp's Q4_0 does: the
same arrays and decoding (MLC-LLM's kernels read them as they are), a smaller output error.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_deploy.quantization.gguf_blocks import GGML_LAYOUTS, ggml_arrays


class QuantizationError(ValueError):
    """An unknown format, or a weight a packing cannot hold; the message says which and why."""


@dataclass(frozen=True)
class ArraySpec:
    """One packed array of a weight: `{weight name}.{suffix}` in the artifact."""

    suffix: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Packing:
    """How one (N, K) weight is stored; `key` is its spelling in IR attributes."""

    @property
    def key(self) -> str:
        raise NotImplementedError

    def arrays(self, shape: tuple[int, int]) -> tuple[ArraySpec, ...]:
        raise NotImplementedError

    def check(self, shape: tuple[int, int], where: str = "weight") -> None:
        """Raise QuantizationError when a weight of `shape` cannot be packed this way."""
        if len(shape) != 2:
            raise QuantizationError(f"{where}: {self.key} packs 2-d [out, in] weights, got shape {shape}")


@dataclass(frozen=True)
class FloatPacking(Packing):
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16"):
            raise QuantizationError(f"float packing: dtype must be float32 or float16, got {self.dtype!r}")

    @property
    def key(self) -> str:
        return f"float:{self.dtype}"

    def arrays(self, shape: tuple[int, int]) -> tuple[ArraySpec, ...]:
        return (ArraySpec("weight", tuple(shape), self.dtype),)


@dataclass(frozen=True)
class GroupPacking(Packing):
    """Symmetric group quantization along K (MLC-LLM's `GroupQuantize`)."""

    bits: int = 4
    group_size: int = 32
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise QuantizationError(f"group packing: bits must be 4 or 8, got {self.bits}")
        if self.group_size % (32 // self.bits) or self.group_size <= 0:
            raise QuantizationError(
                f"group packing: group_size {self.group_size} must be a positive multiple of "
                f"{32 // self.bits} (the values per uint32 word)"
            )
        if self.scale_dtype not in ("float32", "float16"):
            raise QuantizationError(
                f"group packing: scale dtype must be float32 or float16, got {self.scale_dtype!r}"
            )

    @property
    def key(self) -> str:
        return f"group:{self.bits}:{self.group_size}:{self.scale_dtype}"

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def check(self, shape: tuple[int, int], where: str = "weight") -> None:
        super().check(shape, where)
        if shape[1] % self.group_size:
            raise QuantizationError(
                f"{where}: its reduction dim {shape[1]} (shape {shape}) is not a multiple of the "
                f"group size {self.group_size} of {self.key}"
            )

    def arrays(self, shape: tuple[int, int]) -> tuple[ArraySpec, ...]:
        n, k = shape
        return (
            ArraySpec("qweight", (n, k // self.per_word), "uint32"),
            ArraySpec("scale", (n, k // self.group_size), self.scale_dtype),
        )


@dataclass(frozen=True)
class GGMLPacking(Packing):
    """A GGUF block format kept as it is: the block fields split into one array each (bytes and
    values unchanged, see gguf_blocks.py), so kernels load each field with plain typed loads."""

    ggml_type: str = "Q4_1"

    def __post_init__(self) -> None:
        if self.ggml_type not in GGML_LAYOUTS:
            raise QuantizationError(
                f"GGUF type {self.ggml_type} has no kernels here; supported: {', '.join(GGML_LAYOUTS)}"
            )

    @property
    def key(self) -> str:
        return f"ggml:{self.ggml_type}"

    def check(self, shape: tuple[int, int], where: str = "weight") -> None:
        super().check(shape, where)
        block = GGML_LAYOUTS[self.ggml_type].block
        if shape[1] % block:
            raise QuantizationError(
                f"{where}: its reduction dim {shape[1]} is not a multiple of the {self.ggml_type} block {block}"
            )

    def arrays(self, shape: tuple[int, int]) -> tuple[ArraySpec, ...]:
        return tuple(ArraySpec(s, sh, d) for s, sh, d in ggml_arrays(self.ggml_type, shape))


def packing_from_key(key: str) -> Packing:
    """The packing an IR attribute names (`Packing.key`)."""
    kind, _, rest = key.partition(":")
    try:
        match kind:
            case "float":
                return FloatPacking(rest)
            case "group":
                bits, group, scale = rest.split(":")
                return GroupPacking(int(bits), int(group), scale)
            case "ggml":
                return GGMLPacking(rest)
    except ValueError as e:
        raise QuantizationError(f"bad packing {key!r}: {e}") from None
    raise QuantizationError(f"unknown packing {key!r}; expected float:..., group:... or ggml:...")


# ---------------------------------------------------------------------------------------------
# The formats users name


@dataclass(frozen=True)
class Quantization:
    """A named format: the packing of every matrix weight (None: weights stay as they are).

    `per_tensor` formats (gguf) take each weight's packing from its source file instead.
    `calibrated` formats store the same arrays as plain rounding would, with codes and scales
    chosen to minimise each layer's output error on a calibration text (AWQ + GPTQ) instead.
    """

    name: str
    packing: Packing | None
    per_tensor: bool = False
    doc: str = ""
    calibrated: bool = False  # codes and scales chosen on a calibration text (calibrated.py)

    def packing_of(
        self, weight: str, shape: tuple[int, int], source_type: str | None = None
    ) -> Packing | None:
        """How `weight` is stored; `source_type` is its GGML type name (gguf only)."""
        if not self.per_tensor:
            return self.packing
        if source_type is None:
            raise QuantizationError(
                f"{self.name}: weight {weight!r} has no GGUF type; this format needs a GGUF source file"
            )
        return GGMLPacking(source_type)


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("q0f32", None, doc="float32 weights"),
        Quantization("q0f16", FloatPacking("float16"), doc="float16 weights"),
        Quantization(
            "q4f16_1",
            GroupPacking(4, 32, "float16"),
            doc="4-bit, groups of 32, float16 scales",
            calibrated=True,
        ),
        Quantization(
            "q4f32_1",
            GroupPacking(4, 32, "float32"),
            doc="4-bit, groups of 32, float32 scales",
            calibrated=True,
        ),
        Quantization("q8f16_1", GroupPacking(8, 32, "float16"), doc="8-bit, groups of 32, float16 scales"),
        Quantization("gguf", None, per_tensor=True, doc="the GGUF file's own block formats, as they are"),
    )
}


def get_quantization(name: str) -> Quantization:
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        raise QuantizationError(
            f"unknown quantization {name!r}; expected one of {', '.join(QUANTIZATIONS)}"
        ) from None
