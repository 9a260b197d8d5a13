"""Named weight tensors of a Llama model, read lazily from safetensors or GGUF files.

Every source ends in one `Weights` mapping keyed by our parameter names (`PARAMS` below), holding
values laid out exactly as transformers' state dict holds them: [out, in] matrices, GGUF's
rotary row permutation of q/k undone. Nothing is read until a tensor is asked for: files are
memory-mapped, and GGUF block formats stay raw blocks (`Weights.raw`) until something dequantizes.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .config import LlamaConfig, gguf_path_of, load_config, open_gguf


class WeightsError(ValueError):
    """A tensor is missing, has the wrong shape or type, or cannot be read; the message names the
    tensor, the file and what was expected."""


# ---------------------------------------------------------------------------------------------
# The name map: our parameter <- Hugging Face name <- GGUF name


@dataclass(frozen=True)
class Param:
    """One parameter and its spelling in each checkpoint format (`{i}` is the layer index).

    `gguf_rotary` names which head count GGUF used to permute the rows: llama.cpp reorders q and
    k rows from HF's two-halves rotary layout to interleaved pairs, per head.
    """

    name: str
    hf: str
    gguf: str
    gguf_rotary: str | None = None  # "q": num_attention_heads, "k": num_key_value_heads


PARAMS = (
    Param("embed_tokens", "model.embed_tokens.weight", "token_embd.weight"),
    Param("layers.{i}.input_norm", "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    Param("layers.{i}.q_proj", "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", "q"),
    Param("layers.{i}.k_proj", "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", "k"),
    Param("layers.{i}.v_proj", "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    Param("layers.{i}.o_proj", "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    Param(
        "layers.{i}.post_attention_norm",
        "model.layers.{i}.post_attention_layernorm.weight",
        "blk.{i}.ffn_norm.weight",
    ),
    Param("layers.{i}.gate_proj", "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    Param("layers.{i}.up_proj", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    Param("layers.{i}.down_proj", "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    Param("norm", "model.norm.weight", "output_norm.weight"),
    Param("lm_head", "lm_head.weight", "output.weight"),
)

# Present in some checkpoints, carrying nothing the model needs (transformers recomputes them).
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
# llama.cpp stores Llama 3.1 frequency divisors as a tensor; exposed when present, never required.
_GGUF_OPTIONAL = {"rope_freqs": "rope_freqs.weight"}


def param_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model and its shape, in model order; `lm_head` only when untied."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.q_size, config.kv_size
    per_layer = {
        "input_norm": (h,),
        "q_proj": (q, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, q),
        "post_attention_norm": (h,),
        "gate_proj": (i, h),
        "up_proj": (i, h),
        "down_proj": (h, i),
    }
    shapes = {"embed_tokens": (v, h)}
    for layer in range(config.num_hidden_layers):
        shapes |= {f"layers.{layer}.{k}": s for k, s in per_layer.items()}
    shapes["norm"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (v, h)
    return shapes


def checkpoint_names(config: LlamaConfig, fmt: str) -> dict[str, str]:
    """Our parameter name -> its tensor name in a checkpoint of format "hf" or "gguf"."""
    names = {}
    for p in PARAMS:
        layers = range(config.num_hidden_layers) if "{i}" in p.name else [None]
        for layer in layers:
            names[p.name.format(i=layer)] = getattr(p, fmt).format(i=layer)
    return {k: names[k] for k in param_shapes(config)}


# ---------------------------------------------------------------------------------------------
# One tensor as stored


# What we can hand to a consumer: plain floats, and the classic ggml block formats that the
# quantization layer reads as they are. The IQ/TQ formats need lookup grids we do not carry.
_T = gguf.GGMLQuantizationType
SUPPORTED_GGML_TYPES = frozenset(
    [_T.F32, _T.F16, _T.BF16, _T.Q4_0, _T.Q4_1, _T.Q5_0, _T.Q5_1, _T.Q8_0]
    + [_T.Q2_K, _T.Q3_K, _T.Q4_K, _T.Q5_K, _T.Q6_K]
)
_SAFETENSORS_TYPES = {"F32": _T.F32, "F16": _T.F16, "BF16": _T.BF16}


@dataclass(frozen=True, eq=False)
class RawTensor:
    """A tensor as its file stores it.

    `shape` is the logical [out, in] shape. `data` is float32/float16 with that shape for F32/F16,
    uint16 for BF16, and for block formats uint8 of shape (*shape[:-1], row_bytes): each row is
    its blocks back to back, as ggml lays them out. Arrays backed by a file are read-only views.
    """

    ggml_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray
    origin: str  # "file: tensor name", for messages

    @property
    def is_quantized(self) -> bool:
        return self.ggml_type not in (_T.F32, _T.F16, _T.BF16)

    def dequantize(self) -> np.ndarray:
        """float32 values of `shape` (a view, not a copy, when the file already holds float32)."""
        if self.ggml_type == _T.F32:
            return self.data
        if self.ggml_type == _T.F16:
            return self.data.astype(np.float32)
        if self.ggml_type == _T.BF16:
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return gguf.quants.dequantize(self.data, self.ggml_type).reshape(self.shape)


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor will be, known from file headers alone."""

    shape: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType
    origin: str


# ---------------------------------------------------------------------------------------------
# The mapping


class Weights(Mapping[str, np.ndarray]):
    """Lazy mapping from parameter name to float32 array, checked against a config up front.

    `weights[name]` reads (and dequantizes) on every access and keeps nothing; `raw(name)` gives
    the stored form (GGUF blocks untouched); `spec(name)` the shape and type without reading.
    `lm_head` is absent when the embeddings are tied: the model reuses `embed_tokens`.
    """

    def __init__(
        self,
        config: LlamaConfig,
        specs: Mapping[str, TensorSpec],
        read: Callable[[str], RawTensor],
        source: str,
    ) -> None:
        self.config = config
        self.source = source
        self._specs = dict(specs)
        self._read = read

    def __getitem__(self, name: str) -> np.ndarray:
        return self.raw(name).dequantize()

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def raw(self, name: str) -> RawTensor:
        self._check_name(name)
        return self._read(name)

    def spec(self, name: str) -> TensorSpec:
        self._check_name(name)
        return self._specs[name]

    def _check_name(self, name: str) -> None:
        if name not in self._specs:
            why = " (embeddings are tied: use embed_tokens)" if name == "lm_head" else ""
            raise KeyError(f"no parameter {name!r} in {self.source}{why}")

    def __repr__(self) -> str:
        return f"Weights({len(self)} tensors from {self.source})"

    # --- sources ---------------------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls, config: LlamaConfig, arrays: Mapping[str, np.ndarray], source: str = "memory"
    ) -> Weights:
        """In-memory arrays keyed by our names (float32/float16), checked like any file."""
        arrays = dict(arrays)
        specs = {}
        for name, a in arrays.items():
            if a.dtype not in (np.float32, np.float16):
                raise WeightsError(
                    f"tensor {name!r} in {source} has dtype {a.dtype}; expected float32 or float16"
                )
            kind = _T.F32 if a.dtype == np.float32 else _T.F16
            specs[name] = TensorSpec(tuple(a.shape), kind, f"{source}: {name}")
        names = {k: k for k in param_shapes(config)}
        for name in arrays.keys() - names.keys():
            raise WeightsError(f"unexpected tensor {name!r} in {source}: not a parameter of this config")
        _check_complete(config, specs, names, source)

        def read(name: str) -> RawTensor:
            s = specs[name]
            view = arrays[name].view()
            view.flags.writeable = False  # the same contract as a file's read-only memory map
            return RawTensor(s.ggml_type, s.shape, view, s.origin)

        return cls(config, {k: specs[k] for k in names}, read, source)

    @classmethod
    def from_gguf(cls, source: str | os.PathLike | Any, config: LlamaConfig | None = None) -> Weights:
        """A GGUF file (path or open `gguf.GGUFReader`); the config defaults to its metadata."""
        reader = open_gguf(source)
        path = gguf_path_of(reader)
        config = config or LlamaConfig.from_gguf(reader)
        tensors = {t.name: t for t in reader.tensors}
        names = checkpoint_names(config, "gguf")
        names |= {ours: file for ours, file in _GGUF_OPTIONAL.items() if file in tensors}
        wanted = set(names.values())
        specs = {}
        for t in reader.tensors:
            if t.name == "output.weight" and config.tie_word_embeddings:
                continue  # the caller's config ties the embeddings; the file's copy goes unused
            if t.name not in wanted:
                raise WeightsError(
                    f"unexpected tensor {t.name!r} in {path}: not a Llama parameter this loader knows"
                )
            if t.tensor_type not in SUPPORTED_GGML_TYPES:
                raise WeightsError(
                    f"tensor {t.name!r} in {path} has GGUF type {t.tensor_type.name}, which is not supported; "
                    f"expected one of {sorted(x.name for x in SUPPORTED_GGML_TYPES)}"
                )
            specs[t.name] = TensorSpec(
                tuple(int(d) for d in reversed(t.shape)), t.tensor_type, f"{path}: {t.name}"
            )
        expected = param_shapes(config) | {"rope_freqs": (config.head_dim // 2,)}
        _check_complete(config, specs, names, path, expected)
        rotary = {p.name: p.gguf_rotary for p in PARAMS if p.gguf_rotary}

        def read(name: str) -> RawTensor:
            t = tensors[names[name]]
            spec = specs[t.name]
            data = t.data
            kind = rotary.get(re.sub(r"\.\d+\.", ".{i}.", name))
            if kind:
                heads = config.num_attention_heads if kind == "q" else config.num_key_value_heads
                data = data[_unpermute_rows(spec.shape[0], heads)]  # whole rows move: blocks stay intact
            if t.tensor_type == _T.BF16:
                data = data.view(np.uint16).reshape(spec.shape)
            return RawTensor(t.tensor_type, spec.shape, data, spec.origin)

        return cls(config, {k: specs[v] for k, v in names.items()}, read, path)

    @classmethod
    def from_safetensors(cls, folder: str | os.PathLike, config: LlamaConfig | None = None) -> Weights:
        """A Hugging Face folder: `model.safetensors`, or shards listed by `model.safetensors.index.json`."""
        folder = Path(folder)
        config = config or load_config(folder)
        files = _safetensors_files(folder)
        names = checkpoint_names(config, "hf")
        wanted = set(names.values())
        # hf name -> (file, its header entry, where the file's tensor data starts)
        entries: dict[str, tuple[Path, dict[str, Any], int]] = {}
        specs = {}
        for file in files:
            header, start = _safetensors_header(file)
            for hf_name, entry in header.items():
                if hf_name == "__metadata__" or _IGNORED.fullmatch(hf_name):
                    continue
                if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # some tied checkpoints store the copy anyway
                if hf_name not in wanted:
                    raise WeightsError(
                        f"unexpected tensor {hf_name!r} in {file}: not a Llama parameter this loader knows"
                    )
                if hf_name in entries:
                    raise WeightsError(f"tensor {hf_name!r} appears in both {entries[hf_name][0]} and {file}")
                dtype = entry.get("dtype")
                if dtype not in _SAFETENSORS_TYPES:
                    raise WeightsError(
                        f"tensor {hf_name!r} in {file} has dtype {dtype}; expected one of {sorted(_SAFETENSORS_TYPES)}"
                    )
                entries[hf_name] = (file, entry, start)
                specs[hf_name] = TensorSpec(
                    tuple(entry["shape"]), _SAFETENSORS_TYPES[dtype], f"{file}: {hf_name}"
                )
        _check_complete(config, specs, names, str(folder))
        maps: dict[Path, np.memmap] = {}

        def read(name: str) -> RawTensor:
            file, entry, start = entries[names[name]]
            if file not in maps:
                maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
            spec = specs[names[name]]
            begin, end = entry["data_offsets"]
            dtype = {_T.F32: np.float32, _T.F16: np.float16, _T.BF16: np.uint16}[spec.ggml_type]
            data = maps[file][start + begin : start + end].view(dtype).reshape(spec.shape)
            return RawTensor(spec.ggml_type, spec.shape, data, spec.origin)

        return cls(config, {k: specs[v] for k, v in names.items()}, read, str(folder))


def load_weights(path: str | os.PathLike, config: LlamaConfig | None = None) -> Weights:
    """Weights from a GGUF file or a Hugging Face folder of safetensors."""
    path = Path(path)
    if path.is_dir():
        return Weights.from_safetensors(path, config)
    if path.is_file():
        return Weights.from_gguf(path, config)
    raise FileNotFoundError(
        f"no model at {path}: expected a GGUF file or a folder with config.json and safetensors"
    )


# ---------------------------------------------------------------------------------------------
# Checks shared by every source


def _check_complete(
    config: LlamaConfig,
    specs: Mapping[str, TensorSpec],
    names: Mapping[str, str],
    where: str,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Every parameter present with the shape the config implies; all problems in one message."""
    expected = expected or param_shapes(config)
    problems = []
    for ours, file_name in names.items():
        spec = specs.get(file_name)
        if spec is None:
            problems.append(
                f"missing tensor {file_name!r} (parameter {ours}, expected shape {expected[ours]})"
            )
        elif spec.shape != expected[ours]:
            problems.append(
                f"tensor {file_name!r} (parameter {ours}) in {spec.origin.rsplit(': ', 1)[0]} has shape "
                f"{spec.shape}; expected {expected[ours]} from the config"
            )
        elif spec.ggml_type not in (_T.F32, _T.F16, _T.BF16):
            block, _ = gguf.GGML_QUANT_SIZES[spec.ggml_type]
            if spec.shape[-1] % block:
                problems.append(
                    f"tensor {file_name!r} in {where}: last dimension {spec.shape[-1]} is not a multiple "
                    f"of the {spec.ggml_type.name} block size {block}"
                )
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise WeightsError(f"{where}: " + "; ".join(problems[:8]) + more)


def _unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's rotary permutation: within each head, GGUF stores row
    pairs (2j, 2j+1) where HF has rows (j, j + head_dim/2)."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).transpose(0, 2, 1).reshape(-1)  # (rows,)


# ---------------------------------------------------------------------------------------------
# safetensors, read by hand so that tensors are views of one memory map per file


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{index}: no 'weight_map' object")
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise WeightsError(f"{index} lists shard {f.name}, which is missing from {folder}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder}: no *.safetensors files (and no model.safetensors.index.json)")
    return files


def _safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """The JSON header and the offset where tensor data starts; checks every entry fits the file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise WeightsError(f"{file}: not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{file}: corrupt safetensors header ({e})") from None
    start = 8 + n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        itemsize = {"F32": 4, "F16": 2, "BF16": 2}.get(entry["dtype"], 0)
        if itemsize and end - begin != math.prod(entry["shape"]) * itemsize:
            raise WeightsError(
                f"tensor {name!r} in {file}: {end - begin} bytes for shape {entry['shape']} of {entry['dtype']}"
            )
        if start + end > size:
            raise WeightsError(
                f"tensor {name!r} in {file}: data ends at byte {start + end}, past the file's {size}"
            )
    return header, start


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# Writing a Hugging Face folder


def save_hf_folder(
    folder: str | os.PathLike,
    config: LlamaConfig,
    weights: Mapping[str, np.ndarray],
    *,
    shards: int = 1,
    tokenizer: Any = None,
) -> Path:
    """Write `config.json` and safetensors (split into `shards` files with an index when > 1) that
    transformers and `load_weights` both read; also the tokenizer files when one is given."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = checkpoint_names(config, "hf")
    tensors = {names[k]: np.ascontiguousarray(weights[k]) for k in names}
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    groups = _split_evenly(list(tensors), [t.nbytes for t in tensors.values()], shards)
    if len(groups) == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for n, group in enumerate(groups, 1):
            file = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
            save_file({k: tensors[k] for k in group}, str(folder / file), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(group, file)
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
            "weight_map": weight_map,
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder


def _split_evenly(names: list[str], sizes: list[int], parts: int) -> list[list[str]]:
    """Consecutive groups of about equal bytes, none empty."""
    parts = max(1, min(parts, len(names)))
    total, groups, acc = sum(sizes), [[] for _ in range(parts)], 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        g = min(parts - 1, acc * parts // max(total, 1))
        g = max(g, parts - (len(names) - i))  # leave at least one tensor for every later group
        groups[g].append(name)
        acc += size
    return [g for g in groups if g]


# ---------------------------------------------------------------------------------------------
# llama-tiny


def make_tiny_weights(config: LlamaConfig, seed: int = 0) -> Weights:
    """Seeded random weights for any config, scaled so greedy decoding has clear margins.

    Projections are N(0, 1/fan_in), so every layer adds O(1) to an O(1) residual: attention and
    the MLP move the prediction as much as the current token does. The LM head is scaled up so
    logits spread by about 16, which makes the top-2 gap large against float32/float16 noise.
    Norm weights vary around 1 so that a kernel ignoring them is caught.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in param_shapes(config).items():
        if len(shape) == 1:
            a = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "embed_tokens":
            a = rng.standard_normal(shape)
        elif name == "lm_head":
            a = rng.standard_normal(shape) * (_TINY_LOGIT_SCALE / math.sqrt(shape[1]))
        else:
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        arrays[name] = a.astype(np.float32)
    return Weights.from_arrays(config, arrays, source=f"random weights (seed {seed})")


_TINY_LOGIT_SCALE = 16.0
