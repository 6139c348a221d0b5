"""Read and write safetensors files with numpy, bfloat16 included (`safetensors.numpy` refuses it):
the format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} and the raw little-endian bytes. Reads are memory-mapped, so averaging many members
touches one tensor of each at a time."""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def read_header(path: str) -> tuple[dict, int]:
    """({name: {dtype, shape, data_offsets}}, the data's offset in the file); `__metadata__` out."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} exceeds the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{path}: header is not JSON: {e}") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read(path: str) -> dict[str, np.ndarray]:
    """{name: array} memory-mapped from `path` (read-only)."""
    header, start = read_header(path)
    mm = np.memmap(path, np.uint8, mode="r")
    out = {}
    for name, h in header.items():
        if h.get("dtype") not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {h.get('dtype')!r}: allowed "
                             f"{sorted(DTYPES)}")
        a, b = (int(x) for x in h["data_offsets"])
        if not 0 <= a <= b <= len(mm) - start:
            raise ValueError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        dt = np.dtype(DTYPES[h["dtype"]])
        shape = tuple(int(x) for x in h["shape"])
        if (b - a) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise ValueError(f"{path}: tensor {name!r} has {b - a} bytes for shape {shape}")
        out[name] = mm[start + a:start + b].view(dt).reshape(shape)
    return out


def write(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
    """`tensors` to `path` (through a temporary file, renamed when complete)."""
    header, offset, order = {}, 0, sorted(tensors)
    for name in order:
        x = np.asarray(tensors[name])
        if x.dtype not in NAMES:
            raise ValueError(f"safetensors: tensor {name!r} has dtype {x.dtype}")
        header[name] = {"dtype": NAMES[x.dtype], "shape": list(x.shape),
                        "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in order:   # the host's byte order is little-endian (x86, ARM) as the format's
            f.write(np.ascontiguousarray(tensors[name]).tobytes())
    os.replace(tmp, path)
