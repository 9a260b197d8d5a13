"""Kernels linked without LLVM (targets/llvm/elf.py) run as MCJIT-linked ones do; objects it does
not handle go to MCJIT; loading an artifact imports no llvmlite; the /proc/cpuinfo check."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.targets.llvm import elf
from llm_deploy.targets.llvm.cpu import surely_compatible
from llm_deploy.targets.llvm.host import host
from llm_deploy.targets.llvm.runtime import link


def logits(folder, monkeypatch, loader: str) -> tuple[str, list[np.ndarray]]:
    monkeypatch.setenv("LLMD_ELF_LOADER", loader)
    art = load_artifact(folder)
    r = ModelRunner(art)
    r.add_sequence(0)
    out = [r.prefill([0], [[5, 6, 7, 8, 9, 10]])]
    for t in (11, 12, 13):
        out.append(r.decode([0], [t]))
    out.append(r.score(0, [1, 2, 3]))
    return art.executable.kernels.linker, out


def test_elf_linked_kernels_equal_mcjit_linked(tiny_artifact, monkeypatch):
    linker, ours = logits(tiny_artifact, monkeypatch, "1")
    assert linker == "elf"
    linker, mcjit = logits(tiny_artifact, monkeypatch, "0")
    assert linker == "mcjit"
    for a, b in zip(ours, mcjit):
        np.testing.assert_array_equal(a, b)


def test_objects_it_cannot_link_go_to_mcjit(tiny_artifact):
    code = (tiny_artifact / "kernels.o").read_bytes()
    with pytest.raises(elf.ElfUnsupported, match="not a 64-bit little-endian ELF"):
        elf.LoadedObject(b"\x7fELF\x01" + code[5:])
    aarch64 = bytearray(code)
    aarch64[18:20] = (183).to_bytes(2, "little")  # e_machine: AArch64
    with pytest.raises(elf.ElfUnsupported, match="not an x86-64 relocatable object"):
        elf.LoadedObject(bytes(aarch64))
    assert type(link(code)).__name__ == "LoadedObject"


def test_loading_an_artifact_imports_no_llvm(tiny_artifact):
    script = textwrap.dedent(
        """
        import json, sys
        from llm_deploy.runtime.artifact import load_artifact
        from llm_deploy.runtime.model_runner import ModelRunner
        r = ModelRunner(load_artifact(sys.argv[1]))
        r.add_sequence(0)
        r.prefill([0], [[5, 6, 7]])
        r.decode([0], [8])
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("llvmlite"))))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_artifact)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_cpuinfo_check_agrees_with_llvm_on_this_host():
    h = host()
    assert surely_compatible(h.triple, h.features)
    assert not surely_compatible(h.triple, h.features + ",+made-up-feature")  # LLVM decides then
    assert not surely_compatible("aarch64-unknown-linux-gnu", "")


def test_code_is_executable_and_not_writable_data_writable(tiny_artifact):
    obj = elf.LoadedObject((tiny_artifact / "kernels.o").read_bytes())
    try:
        perms = {}
        for line in open("/proc/self/maps"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            for name, address in (("code", obj.base), ("data", obj.base + obj.layout.exec_size)):
                if lo <= address < hi:
                    perms[name] = line.split()[1]
        assert perms["code"].startswith("r-x") and perms["data"].startswith("rw-"), perms
        assert obj.address("llmd_py_data_offset") >= obj.base + obj.layout.exec_size  # a variable
        assert obj.base <= obj.address("llmd_pool_configure") < obj.base + obj.layout.exec_size
        assert obj.address("no_such_symbol") == 0
    finally:
        obj.close()
