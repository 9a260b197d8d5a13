"""Model inputs: configs and presets, named weights (safetensors, GGUF), tokenizer and chat template.

`load_model("llama")` (a preset name), `load_model("model.gguf")` or `load_model("hf_folder/")`
gives the three things a model needs from its files, with none of the compiler.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .config import (
    DEFAULT_MODEL,
    MODELS,
    BuildOptions,
    ConfigError,
    LlamaConfig,
    ModelPreset,
    RopeScaling,
    load_config,
    open_gguf,
)
from .tokenizer import Tokenizer, TokenizerError, load_tokenizer
from .weights import (
    PARAMS,
    RawTensor,
    Weights,
    WeightsError,
    checkpoint_names,
    load_weights,
    make_tiny_weights,
    param_shapes,
    save_hf_folder,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "PARAMS",
    "BuildOptions",
    "ConfigError",
    "LlamaConfig",
    "LoadedModel",
    "ModelPreset",
    "RawTensor",
    "RopeScaling",
    "Tokenizer",
    "TokenizerError",
    "Weights",
    "WeightsError",
    "checkpoint_names",
    "load_config",
    "load_model",
    "load_tokenizer",
    "load_weights",
    "make_tiny_weights",
    "param_shapes",
    "save_hf_folder",
]


class LoadedModel(NamedTuple):
    config: LlamaConfig
    weights: Weights
    tokenizer: Tokenizer


def load_model(source: str | os.PathLike = DEFAULT_MODEL) -> LoadedModel:
    """Config, weights and tokenizer of a preset name (see `MODELS`), a GGUF file or a Hugging Face
    folder. A GGUF file is opened once for all three; weights stay unread until used."""
    if isinstance(source, str) and source in MODELS:
        preset = MODELS[source]
        if preset.weights is None:
            raise ConfigError(
                f"preset {source!r} describes shapes only; pass the path of its Hugging Face folder "
                "or GGUF file to load real weights"
            )
        if "random_seed" in preset.weights:
            config = preset.config
            weights = make_tiny_weights(config, preset.weights["random_seed"])
            return LoadedModel(config, weights, Tokenizer.byte_level(config))
        source = preset.gguf_path()
    path = Path(source)
    if path.is_dir():
        config = load_config(path)
        return LoadedModel(
            config, Weights.from_safetensors(path, config), Tokenizer.from_folder(path, config)
        )
    if path.is_file():
        reader = open_gguf(path)
        config = LlamaConfig.from_gguf(reader)
        return LoadedModel(config, Weights.from_gguf(reader, config), Tokenizer.from_gguf(reader, config))
    raise FileNotFoundError(
        f"{source!s} is neither a model preset ({', '.join(sorted(MODELS))}), a GGUF file, nor a folder"
    )
