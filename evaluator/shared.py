"""Memory the trusted process shares with the runner: CUDA IPC on the GPU, memfd on the CPU.

The trusted process allocates every shared buffer (inputs it generated, output slots it
compares) and hands the runner a handle; it never opens memory the runner allocated, so a
lying runner cannot make it read out of bounds. GPU buffers are plain `cudaMalloc`
allocations (not the caching allocator's), one per buffer, so an IPC handle always maps the
buffer from offset 0 and freeing is explicit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import mmap
import os

import torch

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_CUDART = None


def cudart() -> ctypes.CDLL:
    """The CUDA runtime torch was built against (the driver's primary context is per process,
    so pointers from it and from torch are interchangeable)."""
    global _CUDART
    if _CUDART is None:
        torch_dir = os.path.dirname(torch.__file__)
        names = glob.glob(os.path.join(torch_dir, "lib", "libcudart.so*"))
        names += glob.glob(os.path.join(torch_dir, "..", "nvidia", "*", "lib", "libcudart.so*"))
        names += [ctypes.util.find_library("cudart"), "libcudart.so.13", "libcudart.so.12"]
        for name in filter(None, names):
            try:
                _CUDART = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if _CUDART is None:
            raise OSError("libcudart not found next to torch or on the library path")
    return _CUDART


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * 64)]


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} failed with CUDA error {code}")


def _device_view(address: int, nbytes: int, owner: object) -> torch.Tensor:
    class _Raw:
        __cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (address, False),
            "version": 3,
        }
        keep = owner

    return torch.as_tensor(_Raw(), device="cuda")


class SharedBuffer:
    """One buffer of `nbytes` bytes, owned by the trusted process."""

    def __init__(self, buffer_id: int, nbytes: int, device: str):
        self.id, self.nbytes, self.device = buffer_id, nbytes, device
        size = max(nbytes, 1)
        self.fd = -1
        self.pointer = 0
        if device == "cuda":
            pointer = ctypes.c_void_p()
            _check(cudart().cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(size)), "cudaMalloc")
            self.pointer = pointer.value
            handle = _IpcHandle()
            _check(
                cudart().cudaIpcGetMemHandle(ctypes.byref(handle), pointer), "cudaIpcGetMemHandle"
            )
            self.ipc_handle = ctypes.string_at(ctypes.addressof(handle), 64).hex()
            self.bytes = _device_view(self.pointer, size, self)
        else:
            self.fd = os.memfd_create(f"forge-{buffer_id}", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
            self._map = mmap.mmap(self.fd, size)
            self.ipc_handle = ""
            self.bytes = torch.frombuffer(self._map, dtype=torch.uint8)

    def view(self, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        return typed_view(self.bytes, dtype, shape)

    def release(self) -> None:
        """Free the buffer (idempotent). Views of it dangle afterwards: the caller drops them, and
        the runner has unmapped it before (`Runner.release`) or has exited."""
        self.bytes = None
        if self.pointer:
            cudart().cudaFree(ctypes.c_void_p(self.pointer))
            self.pointer = 0
        if self.fd >= 0:
            self._map.close()
            os.close(self.fd)
            self.fd = -1


def typed_view(raw: torch.Tensor, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """The first bytes of `raw` (uint8) as a tensor of `dtype` and `shape`; fails when the
    buffer is too small rather than reaching past it."""
    count = 1
    for n in shape:
        count *= n
    itemsize = torch.empty((), dtype=dtype).element_size()
    return raw[: count * itemsize].view(dtype).view(shape)


class MappedBuffer:
    """The runner's view of a trusted buffer."""

    def __init__(self, nbytes: int, device: str, ipc_handle: str = "", fd: int = -1):
        self.nbytes = nbytes
        size = max(nbytes, 1)
        self.pointer = 0
        if device == "cuda":
            handle = _IpcHandle()
            ctypes.memmove(ctypes.addressof(handle), bytes.fromhex(ipc_handle), 64)
            pointer = ctypes.c_void_p()
            lazy_peer_access = 1
            code = cudart().cudaIpcOpenMemHandle(ctypes.byref(pointer), handle, lazy_peer_access)
            _check(code, "cudaIpcOpenMemHandle")
            self.pointer = pointer.value
            self.bytes = _device_view(self.pointer, size, self)
        else:
            self._map = mmap.mmap(fd, size)
            os.close(fd)
            self.bytes = torch.frombuffer(self._map, dtype=torch.uint8)

    def view(self, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        return typed_view(self.bytes, dtype, shape)

    def close(self) -> None:
        """Unmap the buffer, whatever still views it (such views dangle: the caller drops them),
        so that the trusted process may free it."""
        self.bytes = None
        if self.pointer:
            _check(
                cudart().cudaIpcCloseMemHandle(ctypes.c_void_p(self.pointer)),
                "cudaIpcCloseMemHandle",
            )
            self.pointer = 0
        else:
            self._map.close()
