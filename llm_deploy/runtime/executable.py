"""An executable: the VM program, the compiled kernels and the constants, saved as a folder.

    exe.save("dist/model")                    # manifest.json, kernels.o, kernels.json, params/
    exe = Executable.load("dist/model")       # no compiler needed: the runtime and the target
    vm = exe.vm()
    logits = vm["decode"](ids, cache, *weights)

Loading checks that the host can run the code (target triple and CPU features) before any
kernel is called: a mismatch is a clear error, never an illegal instruction.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llm_deploy.runtime.vm import Device, VirtualMachine, no_gc

FORMAT = "llm_deploy.executable/1"

# Where each target's runtime loader lives (runtime side: never the compiler).
LOADERS = {
    "llvm": "llm_deploy.targets.llvm.runtime:load",
    "webgpu": "llm_deploy.targets.webgpu.runtime:load",
    "vulkan": "llm_deploy.targets.vulkan.runtime:load",
}


def default_externs() -> dict[str, Callable[..., Any]]:
    """Every library function the runtime provides, by name."""
    from llm_deploy.runtime.externs import EXTERNS

    return {name: e.fn for name, e in EXTERNS.items()}


class Executable:
    def __init__(
        self,
        program: Mapping[str, Any],
        kernels: Any,
        constants: Mapping[str, np.ndarray] | None = None,
        target: str = "llvm",
        metadata: Mapping[str, Any] | None = None,
    ):
        self.program = dict(program)
        self.kernels = kernels
        self.constants = dict(constants or {})
        self.target = target
        self.metadata = dict(metadata or {})

    def vm(
        self,
        externs: Mapping[str, Callable[..., Any]] | None = None,
        device: Device | None = None,
        fast_step: bool | None = None,
    ) -> VirtualMachine:
        """A VM over this program (`fast_step`: see runtime/vm.py; None: LLMD_FAST_STEP decides)."""
        table = default_externs() if externs is None else dict(externs)
        return VirtualMachine(self.program, self.kernels, table, self.constants, device, fast_step)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.kernels.save(folder, "kernels")
        if self.constants:
            from safetensors.numpy import save_file

            save_file(
                {k: np.ascontiguousarray(v) for k, v in self.constants.items()},
                folder / "constants.safetensors",
            )
        manifest = {
            "format": FORMAT,
            "target": self.target,
            "metadata": self.metadata,
            "program": self.program,
        }
        (folder / "executable.json").write_text(json.dumps(manifest, indent=1))
        return folder

    @staticmethod
    def load(folder: str | Path, num_threads: int | None = None) -> Executable:
        folder = Path(folder)
        path = folder / "executable.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder} is not an executable folder: {path.name} is missing")
        with no_gc():
            manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        target = manifest["target"]
        if target not in LOADERS:
            raise ValueError(f"{path}: unknown target {target!r}; this runtime knows {', '.join(LOADERS)}")
        module, attr = LOADERS[target].split(":")
        kernels = getattr(importlib.import_module(module), attr)(folder, "kernels", num_threads)
        constants = {}
        if (folder / "constants.safetensors").exists():
            from safetensors.numpy import load_file

            constants = load_file(folder / "constants.safetensors")
        return Executable(manifest["program"], kernels, constants, target, manifest.get("metadata"))
