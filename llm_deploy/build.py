"""`llm-deploy build`: a model (preset, Hugging Face folder or GGUF file) into an artifact folder."""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from llm_deploy import __version__
from llm_deploy.runtime.artifact import MANIFEST_FORMAT


def model_name(source: str | os.PathLike) -> str:
    from llm_deploy.models import MODELS

    if isinstance(source, str) and source in MODELS:
        return source
    return Path(source).stem if Path(source).suffix == ".gguf" else Path(source).name


def build_model(
    source: str | os.PathLike = "llama",
    target: str = "llvm",
    output: str | os.PathLike | None = None,
    quantization: str | None = None,
    progress: bool = True,
    pipeline: str | list | None = None,
    **build_overrides: Any,
) -> Path:
    """Build `source` for `target`; returns the artifact folder (written atomically).

    `pipeline` replaces the target's passes (a PIPELINES name or a list of passes: benchmarks
    build with one optimization left out to measure what it brings)."""
    from tqdm import tqdm

    from llm_deploy.compiler.passes.quantize import quantize
    from llm_deploy.compiler.pipeline import build
    from llm_deploy.models import MODELS, BuildOptions, load_model
    from llm_deploy.models.llama import build_llama

    steps = tqdm(total=5, disable=not progress, desc="build", unit="step", leave=False)

    def stage(text: str) -> None:
        steps.set_description(text)

    stage("loading model")
    model = load_model(source)
    options = MODELS[source].build if isinstance(source, str) and source in MODELS else BuildOptions()
    if quantization is not None:
        build_overrides["quantization"] = quantization
    options = replace(options, **build_overrides)
    source_types = _source_types(model, options.quantization)
    steps.update()

    stage("building IR")
    mod = build_llama(model.config, "float32", options.context_window)
    # The KV pools' dtype (lower_kv_cache) and whether decode takes int8 activations (int_dot).
    mod = mod.with_attrs(kv_dtype=options.kv_dtype, int_dot=options.int_dot)
    mod = quantize(mod, options.quantization, source_types)
    steps.update()

    stage("compiling")
    exe = build(mod, target, pipeline=pipeline or "default")
    steps.update()

    name = model_name(source)
    out = Path(output) if output is not None else Path("dist") / f"{name}-{options.quantization}-{target}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stage("writing weights")
        from safetensors.numpy import save_file

        packed = packed_weights(model.weights, mod.attrs["quantization"], model.tokenizer)
        names, arrays = list(packed), list(packed.values())
        if names != list(mod["decode"].attrs["params"]):
            raise AssertionError(f"packed weights {names[:4]}... differ from the model's parameters")
        (tmp / "params").mkdir()
        save_file(
            {n: np.ascontiguousarray(a) for n, a in zip(names, arrays)}, tmp / "params" / "params.safetensors"
        )
        steps.update()

        stage("writing artifact")
        exe.save(tmp)
        model.tokenizer.save(tmp)
        chat_config = {
            "stop_token_ids": list(model.tokenizer.stop_token_ids),
            "bos_token_id": model.config.bos_token_id,
            "default_sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256},
        }
        (tmp / "chat_config.json").write_text(json.dumps(chat_config, indent=1))
        manifest = {
            "format": MANIFEST_FORMAT,
            "llm_deploy_version": __version__,
            "model": name,
            "model_config": model.config.to_dict() | _config_fields(model.config),
            "build_options": asdict(options),
            "target": target,
            "params": names,
            "param_shapes": {n: list(a.shape) for n, a in zip(names, arrays)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        steps.update()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()
    return out


def _source_types(model, quantization: str) -> dict[str, str] | None:
    """Each weight's GGML type, for `gguf` (which keeps a GGUF file's own block formats)."""
    from llm_deploy.models.weights import param_shapes

    if quantization != "gguf":
        return None
    if not str(model.weights.source).endswith(".gguf"):
        raise ValueError(
            f"quantization 'gguf' keeps a GGUF file's blocks as they are, but the weights come from "
            f"{model.weights.source}; choose one of q0f32, q0f16, q4f16_1, q4f32_1, q8f16_1"
        )
    return {name: model.weights.spec(name).ggml_type.name for name in param_shapes(model.config)}


def packed_weights(weights, record, tokenizer=None) -> dict[str, np.ndarray]:
    """Every parameter the built model takes, by name, in order: float32 weights as they are,
    quantized ones packed as the quantize pass recorded (`record`: the module's attribute).
    Calibrated formats (q4) choose their codes by AWQ + GPTQ on the calibration text, which needs
    the `tokenizer` (and may rescale RMSNorm weights); without one they round to nearest."""
    from llm_deploy.models.weights import param_shapes
    from llm_deploy.quantization import GGMLPacking, get_quantization, pack, pack_ggml, packing_from_key

    out: dict[str, np.ndarray] = {}
    plan = record["params"]
    calibrated = None
    if tokenizer is not None and get_quantization(record["name"]).calibrated:
        from llm_deploy.quantization.calibrated import calibrated_weights

        calibrated = calibrated_weights(weights.config, weights, tokenizer, plan)
    for name in param_shapes(weights.config):
        if name not in plan:
            changed = calibrated.floats.get(name) if calibrated else None
            out[name] = np.ascontiguousarray(weights[name] if changed is None else changed, dtype="float32")
            continue
        entry = plan[name]
        packing, shape = packing_from_key(entry["packing"]), tuple(entry["shape"])
        if isinstance(packing, GGMLPacking):
            raw = weights.raw(name)
            if raw.ggml_type.name != packing.ggml_type:
                raise ValueError(
                    f"weight {name}: the file holds {raw.ggml_type.name}, the build expected {packing.ggml_type}"
                )
            arrays = pack_ggml(packing, raw.data, shape)
        elif calibrated and name in calibrated.packed:
            arrays = calibrated.packed[name]
        else:
            arrays = pack(packing, weights[name])
        for array_name, a in zip(entry["arrays"], arrays.values()):
            out[array_name] = a
    return out


def _config_fields(config) -> dict[str, Any]:
    """The fields the runtime reads, under fixed names whatever the source's spelling."""
    return {
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "num_attention_heads": config.num_attention_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
    }


def cache_root() -> Path:
    return Path(os.environ.get("LLM_DEPLOY_CACHE", Path.home() / ".cache" / "llm_deploy")) / "artifacts"


@functools.cache
def code_fingerprint() -> str:
    """A hash of the package's Python sources and model presets: what a build's output depends on."""
    import hashlib

    root = Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted([*root.rglob("*.py"), *(root.parent / "configs").glob("*.json")]):
        h.update(str(f.relative_to(root.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def content_key(source: str | os.PathLike, target: str, quantization: str | None) -> str:
    """A key that changes with the model's bytes, the build settings and our code (a cached
    artifact from an older compiler is never served)."""
    import hashlib

    from llm_deploy.models import MODELS

    h = hashlib.sha256(f"{__version__}|{target}|{quantization}|{code_fingerprint()}".encode())
    if isinstance(source, str) and source in MODELS:
        preset = MODELS[source]
        h.update(json.dumps(asdict(preset.build), sort_keys=True).encode())
        h.update(json.dumps(preset.config.to_dict(), sort_keys=True, default=str).encode())
        if preset.weights and "random_seed" in preset.weights:
            h.update(str(preset.weights["random_seed"]).encode())
            return h.hexdigest()[:16]
        source = preset.gguf_path()
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def ensure_artifact(
    source: str | os.PathLike, target: str = "llvm", quantization: str | None = None, progress: bool = True
) -> Path:
    """An artifact folder as it is, or a model built once into the cache and reused afterwards."""
    from llm_deploy.runtime.artifact import is_artifact

    if is_artifact(source):
        return Path(source)
    key = content_key(source, target, quantization)
    out = cache_root() / f"{model_name(source)}-{quantization or 'default'}-{target}-{key}"
    if is_artifact(out):
        return out
    return build_model(source, target, out, quantization, progress)
