"""Weight quantization: named formats, their packing (numpy), and GGUF blocks used as they are.

The rewrite of the model's ops lives in the compiler (`compiler/passes/quantize.py`); the kernels
in `compiler/ops/lower_quantized.py`. Both read the packing defined here.
"""

from llm_deploy.quantization.formats import (
    QUANTIZATIONS,
    ArraySpec,
    FloatPacking,
    GGMLPacking,
    GroupPacking,
    Packing,
    Quantization,
    QuantizationError,
    get_quantization,
    packing_from_key,
)
from llm_deploy.quantization.pack import pack, pack_ggml, unpack

__all__ = [
    "QUANTIZATIONS",
    "ArraySpec",
    "FloatPacking",
    "GGMLPacking",
    "GroupPacking",
    "Packing",
    "Quantization",
    "QuantizationError",
    "get_quantization",
    "pack",
    "pack_ggml",
    "packing_from_key",
    "unpack",
]
