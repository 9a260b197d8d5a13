"""The native launch loop (targets/llvm/launcher.py): what it passes to each kernel, and that its
embedded x86-64 code is its IR compiled."""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
import numpy as np

from llm_deploy.targets.llvm import launcher
from llm_deploy.targets.llvm.host import init_llvm
from llm_deploy.targets.llvm.runtime import _numpy_data_offset

PACKED = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64))


def test_launch_loop_resolves_static_and_dynamic_buffers_and_passes_vars():
    calls = []

    def record(nbufs, nvars):
        def fn(bufs, vars_):
            calls.append(([bufs[i] for i in range(nbufs)], [vars_[i] for i in range(nvars)]))

        return fn

    k1, k2 = PACKED(record(2, 1)), PACKED(record(3, 0))
    a1, a2 = (ctypes.cast(k, ctypes.c_void_p).value for k in (k1, k2))
    static = np.zeros(4, np.float32)
    dyn0, dyn1 = np.ones(3, np.int32), np.ones(5, np.float64)
    code = np.array(
        [a1, 2, 1, static.ctypes.data, -1, 42, a2, 3, 0, -2, -1, static.ctypes.data], dtype=np.int64
    )
    objs = np.array([id(dyn0), id(dyn1)], dtype=np.int64)
    bufs = np.zeros(8, dtype=np.int64)
    run = launcher.run_launches()
    run(code.ctypes.data, 2, objs.ctypes.data, _numpy_data_offset(), bufs.ctypes.data)
    assert calls == [
        ([static.ctypes.data, dyn0.ctypes.data], [42]),
        ([dyn1.ctypes.data, dyn0.ctypes.data, static.ctypes.data], []),
    ]
    calls.clear()
    run(code.ctypes.data, 0, objs.ctypes.data, _numpy_data_offset(), bufs.ctypes.data)
    assert calls == []


def test_embedded_x86_64_code_is_the_ir_compiled():
    init_llvm()
    mod = llvm.parse_assembly(launcher._IR)
    mod.triple = "x86_64-unknown-linux-gnu"
    tm = llvm.Target.from_triple(mod.triple).create_target_machine(
        cpu="x86-64", features="", opt=3, reloc="pic", codemodel="default"
    )
    obj = llvm.ObjectFileRef.from_data(tm.emit_object(mod))
    text = next(s.data() for s in obj.sections() if s.name() == b".text")
    assert text == launcher.X86_64_CODE
