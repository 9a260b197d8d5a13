"""Loading the kernels' object file without LLVM: a small linker for x86-64 relocatable ELF.

MCJIT (llvmlite) links an object file in a few ms, but importing llvmlite costs ~70 ms and the
LLVM library ~45 MB of resident pages, more than the rest of the runtime. The objects codegen
emits are simple (position-independent code, `reloc="pic"`): sections to place, relocations of
four kinds (PC32, PLT32, GOTPCREL[X], 64) against their own symbols and a few C library
functions (malloc, memcpy, expf, pthread_create, syscall...). `LoadedObject` does exactly that:
one private mapping, code and constants made read-only and executable after relocation, data
writable, calls into the C library through 16-byte stubs (`jmp *addr(%rip)`), GOT entries for
GOT-relative loads. Unwind tables (.eh_frame) are not loaded: nothing unwinds through kernels.

Anything else (another architecture, a relocation kind or a symbol it does not know, constructors
to run) raises `ElfUnsupported`, leaving nothing mapped, and the caller links with MCJIT instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import platform
import struct
import sys
from dataclasses import dataclass
from typing import Any

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHT_SYMTAB, SHT_RELA, SHT_NOBITS = 2, 4, 8
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
STT_FUNC, STT_SECTION = 2, 3
R_64, R_PC32, R_PLT32, R_GOTPCREL, R_PC64, R_GOTPCRELX, R_REX_GOTPCRELX = 1, 2, 4, 9, 24, 41, 42
GOT_KINDS = (R_GOTPCREL, R_GOTPCRELX, R_REX_GOTPCRELX)
STUB = bytes.fromhex("ff2500000000")  # jmp *0(%rip), then the 8-byte target: 14 bytes, 16 with padding


class ElfUnsupported(Exception):
    """An object file this loader does not handle (the caller links it with MCJIT)."""


@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int


@dataclass(frozen=True)
class _Symbol:
    name: str
    info: int
    shndx: int
    value: int


def supported_here() -> bool:
    return platform.machine() in ("x86_64", "AMD64") and sys.platform.startswith("linux")


@functools.cache
def process_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


@functools.cache
def _libraries() -> tuple[ctypes.CDLL, ...]:
    """Where external symbols come from: the process (libc, and libm when Python links it)."""
    libs = [process_libc()]
    name = ctypes.util.find_library("m")
    if name:
        libs.append(ctypes.CDLL(name))
    return tuple(libs)


def external_address(name: str) -> int:
    for lib in _libraries():
        try:
            return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        except AttributeError:
            continue
    raise ElfUnsupported(f"the object needs {name!r}, which the C library does not export")


def _align(x: int, a: int) -> int:
    return -(-x // max(a, 1)) * max(a, 1)


@dataclass(frozen=True)
class _Layout:
    """Offsets in the mapping: code and constants, then the stubs (read-only, executable), and a
    page further on data, bss and the GOT (writable). One mapping, so that every distance fits
    the 32 bits of PC-relative relocations."""

    place: dict[int, int]  # section index -> offset
    stubs_at: int
    exec_size: int
    got_at: int
    size: int

    @staticmethod
    def of(sections: list[_Section], loaded: list[int], nstubs: int, ngot: int) -> _Layout:
        place: dict[int, int] = {}
        end = 0
        for writable in (False, True):
            if writable:
                stubs_at = end = _align(end, 16)
                exec_size = end = _align(max(end + 16 * nstubs, 1), mmap.PAGESIZE)
            for i in loaded:
                if bool(sections[i].flags & SHF_WRITE) == writable:
                    place[i] = end = _align(end, sections[i].align)
                    end += sections[i].size
        got_at = _align(end, 8)
        return _Layout(place, stubs_at, exec_size, got_at, _align(got_at + 8 * ngot, mmap.PAGESIZE))


class LoadedObject:
    """An object file's code and data in this process; `address(symbol)` of its globals."""

    def __init__(self, data: bytes):
        if not supported_here():
            raise ElfUnsupported(
                f"the ELF loader runs on x86-64 Linux, not {platform.machine()} {sys.platform}"
            )
        sections, self._symbols_raw = _parse(data)
        for s in sections:
            if s.name in (".init_array", ".fini_array", ".ctors", ".dtors", ".preinit_array"):
                raise ElfUnsupported(f"the object has {s.name} (constructors this loader does not run)")
        loaded = [
            i
            for i, s in enumerate(sections)
            if s.flags & SHF_ALLOC and s.size and s.name != ".eh_frame"  # unwind tables: unused
        ]
        relocs = [
            (s.info, list(struct.iter_unpack("<QQq", data[s.offset : s.offset + s.size])))
            for s in sections
            if s.type == SHT_RELA and s.info in loaded
        ]
        self._stubs, self._got = self._imports(relocs)
        self.layout = _Layout.of(sections, loaded, len(self._stubs), len(self._got))
        symbols = self._symbols_raw
        undefined = {symbols[i].name for i in self._got if symbols[i].shndx == SHN_UNDEF} | set(self._stubs)
        self._externals = {name: external_address(name) for name in undefined}

        libc, size = process_libc(), self.layout.size
        base = libc.mmap(
            None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
        )
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap for the kernels' code failed")
        self.base, self.size = base, size
        try:
            memory = (ctypes.c_char * size).from_address(base)
            for i, at in self.layout.place.items():
                s = sections[i]
                if s.type != SHT_NOBITS:  # .bss: the mapping is zeroed already
                    memory[at : at + s.size] = data[s.offset : s.offset + s.size]
            self._link(memory, relocs)
            del memory
            if libc.mprotect(base, self.layout.exec_size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
                raise OSError(ctypes.get_errno(), "mprotect of the kernels' code failed")
        except BaseException:
            self.close()  # nothing of it is kept
            raise
        self._symbols = {
            s.name: self._symbol_address(i)
            for i, s in enumerate(symbols)
            if s.name and s.info >> 4 in (1, 2) and s.shndx in self.layout.place  # global, weak
        }

    def _imports(self, relocs: list) -> tuple[dict[str, int], dict[int, int]]:
        """The C functions called (a stub each) and the symbols loaded through the GOT (an entry each)."""
        symbols = self._symbols_raw
        stubs: dict[str, int] = {}
        got: dict[int, int] = {}
        for _, table in relocs:
            for _offset, r_info, _addend in table:
                sym, kind = r_info >> 32, r_info & 0xFFFFFFFF
                if kind not in (R_64, R_PC32, R_PLT32, R_PC64, *GOT_KINDS):
                    raise ElfUnsupported(f"relocation kind {kind} (symbol {symbols[sym].name!r})")
                if kind in GOT_KINDS:
                    got.setdefault(sym, len(got))
                elif symbols[sym].shndx == SHN_UNDEF:
                    if kind == R_PC32:
                        raise ElfUnsupported(
                            f"a PC-relative reference to external data {symbols[sym].name!r}"
                        )
                    if kind == R_PLT32:
                        stubs.setdefault(symbols[sym].name, len(stubs))
        return stubs, got

    def _symbol_address(self, sym: int) -> int:
        s = self._symbols_raw[sym]
        if s.shndx == SHN_UNDEF:
            return self._externals[s.name]
        if s.shndx == SHN_ABS:
            return s.value
        if s.shndx not in self.layout.place:
            raise ElfUnsupported(f"symbol {s.name!r} lies in a section that is not loaded")
        return self.base + self.layout.place[s.shndx] + s.value

    def _link(self, memory: Any, relocs: list) -> None:
        """Fill the stubs and the GOT, then apply the relocations (x86-64 psABI: S + A - P)."""
        base, layout, symbols = self.base, self.layout, self._symbols_raw
        for name, k in self._stubs.items():
            at = layout.stubs_at + 16 * k
            memory[at : at + 14] = STUB + struct.pack("<Q", self._externals[name])
        for sym, k in self._got.items():
            struct.pack_into("<Q", memory, layout.got_at + 8 * k, self._symbol_address(sym))
        for target, table in relocs:
            for r_offset, r_info, addend in table:
                sym, kind = r_info >> 32, r_info & 0xFFFFFFFF
                at = layout.place[target] + r_offset
                where = base + at
                if kind == R_64:
                    struct.pack_into("<Q", memory, at, (self._symbol_address(sym) + addend) % (1 << 64))
                    continue
                if kind == R_PC64:
                    struct.pack_into("<q", memory, at, self._symbol_address(sym) + addend - where)
                    continue
                if kind in GOT_KINDS:
                    target_address = base + layout.got_at + 8 * self._got[sym]
                elif kind == R_PLT32 and symbols[sym].shndx == SHN_UNDEF:
                    target_address = base + layout.stubs_at + 16 * self._stubs[symbols[sym].name]
                else:  # PC32, PLT32 to a symbol of the object
                    target_address = self._symbol_address(sym)
                value = target_address + addend - where
                if not -(1 << 31) <= value < 1 << 31:
                    raise ElfUnsupported(f"relocation at {at:#x} out of 32-bit range")
                struct.pack_into("<i", memory, at, value)

    def address(self, name: str) -> int:
        """Where a global function or variable of the object is (0 if it has none of that name)."""
        return self._symbols.get(name, 0)

    def close(self) -> None:
        if self.base:
            process_libc().munmap(self.base, self.size)
            self.base = 0


def _parse(data: bytes) -> tuple[list[_Section], list[_Symbol]]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfUnsupported("not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_type != 1 or e_machine != 62:
        raise ElfUnsupported(f"not an x86-64 relocatable object (type {e_type}, machine {e_machine})")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = raw[shstrndx][4]

    def cstr(offset: int) -> str:
        return data[offset : data.index(b"\0", offset)].decode()

    sections = [_Section(cstr(strtab_off + r[0]), r[1], r[2], r[4], r[5], r[6], r[7], r[8]) for r in raw]
    symbols: list[_Symbol] = []
    for s in sections:
        if s.type == SHT_SYMTAB:
            names = sections[s.link].offset
            for name, info, _, shndx, value, _ in struct.iter_unpack(
                "<IBBHQQ", data[s.offset : s.offset + s.size]
            ):
                symbols.append(_Symbol(cstr(names + name), info, shndx, value))
    if not symbols:
        raise ElfUnsupported("the object has no symbol table")
    return sections, symbols
