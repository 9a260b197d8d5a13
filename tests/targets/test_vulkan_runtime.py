# ruff: noqa: F401, F811
"""The Vulkan runtime on lavapipe: what the device reports, tensors that keep numpy's bytes for
every dtype the target holds, uploads and copies ordered with the dispatches of a step in one
command buffer, pooled buffers and cached descriptor sets reused by a repeated step, and
arguments checked against the kernel's signature."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.targets.vulkan.codegen import codegen
from llm_deploy.targets.webgpu.runtime import KernelCallError
from tests.targets.vulkan_util import vk_device


def test_the_device_reports_its_limits_and_features(vk_device):
    assert vk_device.limits["max-storage-buffers"] >= 8
    assert vk_device.limits["max-push-constants"] >= 128
    assert vk_device.subgroup_size in (0, 4, 8, 16, 32, 64, 128)
    assert "llvmpipe" in repr(vk_device) or vk_device.device_name


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "int32", "uint32", "int8", "uint8", "bool", "int16", "int64"]
)
def test_tensors_round_trip_every_dtype(vk_device, dtype):
    a = (np.arange(-7, 30) % 5).astype(dtype).reshape(37)
    assert np.array_equal(vk_device.to_host(vk_device.from_host(a, persistent=True)), a)
    assert np.array_equal(vk_device.to_host(vk_device.from_host(a)), a)


def _add_one():
    n = S.var("n")
    i = S.var("i")
    a, b = T.Buffer("A", (n,), "float32"), T.Buffer("B", (n,), "float32")
    body = T.For(i, n, T.Store(b, (i,), T.binary("add", T.Load(a, (i,)), T.Imm(1.0, "float32"))))
    return T.PrimFunc((a, b), body, {})


@pytest.fixture(scope="module")
def add_one(vk_device):
    from llm_deploy.targets.vulkan.runtime import KernelModule

    return KernelModule(codegen({"add_one": _add_one()}).specs, vk_device)["add_one"]


def test_a_step_is_one_command_buffer_with_uploads_and_dispatches_in_order(vk_device, add_one):
    before = dict(vk_device.stats)
    x = vk_device.from_host(np.arange(5, dtype=np.float32))
    y = vk_device.alloc((5,), "float32")
    add_one(x, y)
    vk_device.write(x, np.full(5, 10, np.float32))  # after the first dispatch: it must not see this
    z = vk_device.alloc((5,), "float32")
    add_one(x, z)
    vk_device.copy(z, 0, y, 8, 8)  # y[2:4] = z[0:2]
    got_y, got_z = vk_device.to_host((y, z))
    assert vk_device.stats["submissions"] - before["submissions"] == 1
    assert vk_device.stats["dispatches"] - before["dispatches"] == 2
    np.testing.assert_array_equal(got_y, [1, 2, 11, 11, 5])
    np.testing.assert_array_equal(got_z, np.full(5, 11))


def test_a_repeated_step_reuses_buffers_and_descriptor_sets(vk_device, add_one):
    def step(n):
        x = vk_device.from_host(np.ones(n, np.float32))
        y = vk_device.alloc((n,), "float32")
        add_one(x, y)
        return vk_device.to_host(y)

    for n in (3, 100, 3):  # one shader for every n
        np.testing.assert_array_equal(step(n), np.full(n, 2))
    before = dict(vk_device.stats)
    step(3)
    assert vk_device.stats["buffers"] == before["buffers"]
    assert vk_device.stats["descriptor_sets"] == before["descriptor_sets"]


def test_arguments_are_checked_against_the_signature(vk_device, add_one):
    x = vk_device.from_host(np.ones(4, np.float32))
    with pytest.raises(KernelCallError, match="add_one"):
        add_one(x, vk_device.alloc((5,), "float32"))
    with pytest.raises(KernelCallError, match="takes 2 arguments"):
        add_one(x)
