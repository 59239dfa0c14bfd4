#!/usr/bin/env python3
"""Reads an mhc checkpoint with the standard library and NumPy alone, to show it is plain
safetensors: prints each tensor's name, dtype and shape, then checks the SHA-256 that mhc stores
in the metadata against the whole file (with those 64 digits read as zeros).

    python3 scripts/read_safetensors.py runs/default/latest
"""
import hashlib
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def whole_file_digest(file, header_size, stored):
    """SHA-256 of the file with the stored digest's 64 digits replaced by zeros (as mhc writes it)."""
    key = b'"sha256":"' + stored.encode() + b'"'
    at = file.find(key, 8, 8 + header_size)
    if not stored or at < 0:
        return None
    start = at + len(b'"sha256":"')
    return hashlib.sha256(file[:start] + b"0" * 64 + file[start + 64:]).hexdigest()


def read(path):
    with open(path, "rb") as f:
        file = f.read()
    (header_size,) = struct.unpack("<Q", file[:8])
    header = json.loads(file[8 : 8 + header_size])
    data = file[8 + header_size :]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = entry["data_offsets"]
        if entry["dtype"] == "BF16":  # NumPy has no bfloat16: widen to float32
            raw = np.frombuffer(data[begin:end], dtype=np.uint16).astype(np.uint32) << 16
            tensors[name] = raw.view(np.float32).reshape(entry["shape"])
        else:
            tensors[name] = np.frombuffer(data[begin:end], dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors, metadata, whole_file_digest(file, header_size, metadata.get("sha256", ""))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: read_safetensors.py CHECKPOINT")
    tensors, metadata, digest = read(sys.argv[1])
    for name, array in tensors.items():
        print(name, array.dtype, tuple(array.shape))
    print("step", metadata.get("step"))
    if metadata.get("sha256") != digest:
        sys.exit("sha256 mismatch: the file was truncated or modified")
    print("sha256 ok")


if __name__ == "__main__":
    main()
