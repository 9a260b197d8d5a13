"""A built model on disk, and loading it without the compiler.

dist/smollm2-135m-q0f32-llvm/
  manifest.json          model config, build options, target, parameter names and shapes
  executable.json        the VM program (see runtime/executable.py)
  kernels.o kernels.json compiled kernels and their signatures
  params/params.safetensors   weights in parameter order, already laid out for the kernels
  tokenizer.json, tokenizer_config.json   the tokenizer and its chat template
  chat_config.json       stop tokens and default sampling
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_deploy.runtime.executable import Executable

MANIFEST_FORMAT = "llm_deploy.artifact/1"


class ArtifactError(ValueError):
    pass


@dataclass
class Artifact:
    folder: Path
    manifest: dict[str, Any]
    executable: Executable
    params: list[np.ndarray]
    tokenizer: Any
    chat_config: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["model_config"]

    @property
    def build_options(self) -> dict[str, Any]:
        return self.manifest["build_options"]


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file() and (Path(path) / "executable.json").is_file()


def load_artifact(folder: str | Path, num_threads: int | None = None) -> Artifact:
    """Load an artifact folder: program, kernels (checked against this host), weights, tokenizer."""
    from safetensors import safe_open

    from llm_deploy.models.tokenizer import Tokenizer

    folder = Path(folder)
    if not is_artifact(folder):
        raise ArtifactError(
            f"{folder} is not an artifact folder (manifest.json and executable.json expected)"
        )
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(
            f"{folder}/manifest.json: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}"
        )
    executable = Executable.load(folder, num_threads)
    params: list[np.ndarray] = []
    path = folder / "params" / "params.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        available = set(f.keys())
        for name in manifest["params"]:
            if name not in available:
                raise ArtifactError(f"{path}: parameter {name!r} is missing")
            params.append(f.get_tensor(name))
    tokenizer = Tokenizer.from_folder(folder)
    chat_config = json.loads((folder / "chat_config.json").read_text())
    return Artifact(folder, manifest, executable, params, tokenizer, chat_config)
