"""A built model on disk, and loading it without the compiler.

dist/smollm2-135m-q0f32-llvm/
  manifest.json          model config, build options, target, parameter names and shapes
  executable.json        the VM program (see runtime/executable.py)
  kernels.o kernels.json compiled kernels and their signatures
  params/params.safetensors   weights in parameter order, already laid out for the kernels
  tokenizer.json, tokenizer_config.json   the tokenizer and its chat template
  chat_config.json       stop tokens and default sampling

Loading is meant to take a fraction of a second: the weights are zero-copy views of the
safetensors file, mapped copy-on-write (no read, no second copy in memory; the OS pages them in
on first use and can share them between processes), and the tokenizer is parsed on first use
(a model runner never needs it). `load_artifact(..., fast_step=False)` gives VMs without the
low-overhead step (runtime/vm.py), for measuring it.
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_deploy.runtime.executable import Executable

MANIFEST_FORMAT = "llm_deploy.artifact/1"


class ArtifactError(ValueError):
    pass


@dataclass(eq=False)
class Artifact:
    folder: Path
    manifest: dict[str, Any]
    executable: Executable
    params: list[np.ndarray]
    chat_config: dict[str, Any]
    fast_step: bool | None = None  # for the VMs of this artifact; None: LLMD_FAST_STEP decides

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The tokenizer (`llm_deploy.models.tokenizer.Tokenizer`), parsed on first use."""
        from llm_deploy.models.tokenizer import Tokenizer

        return Tokenizer.from_folder(self.folder)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["model_config"]

    @property
    def build_options(self) -> dict[str, Any]:
        return self.manifest["build_options"]


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file() and (Path(path) / "executable.json").is_file()


def load_artifact(
    folder: str | Path, num_threads: int | None = None, fast_step: bool | None = None
) -> Artifact:
    """Load an artifact folder: program, kernels (checked against this host), weights.

    `fast_step`: whether the VMs made for this artifact use the low-overhead step (runtime/vm.py;
    None: on unless the environment sets LLMD_FAST_STEP=0)."""
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
    if not (folder / "tokenizer.json").is_file():
        raise ArtifactError(f"{folder} has no tokenizer.json")
    executable = Executable.load(folder, num_threads)
    tensors = map_safetensors(folder / "params" / "params.safetensors")
    params = []
    for name in manifest["params"]:
        if name not in tensors:
            raise ArtifactError(f"{folder / 'params' / 'params.safetensors'}: parameter {name!r} is missing")
        params.append(tensors[name])
    chat_config = json.loads((folder / "chat_config.json").read_text())
    return Artifact(folder, manifest, executable, params, chat_config, fast_step)


# safetensors dtype names -> numpy
_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool",
}  # fmt: skip


def map_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as views of a copy-on-write mapping of it.

    Writable arrays whose writes stay private to the process; a tensor whose offset does not suit
    its dtype's alignment (the format does not promise it) is copied instead."""
    path = Path(path)
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < 8:
            raise ArtifactError(f"{path}: not a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise ArtifactError(f"{path}: header of {header_len} bytes in a file of {size}")
        header = json.loads(f.read(header_len))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    start = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ArtifactError(f"{path}: tensor {name!r} has dtype {info['dtype']}, not supported here")
        dtype = np.dtype(_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or start + end > size:
            raise ArtifactError(f"{path}: tensor {name!r} of shape {shape} has {end - begin} bytes")
        array = np.frombuffer(mapped, dtype, count, start + begin).reshape(shape)
        out[name] = array if (start + begin) % dtype.itemsize == 0 else array.copy()
    return out
