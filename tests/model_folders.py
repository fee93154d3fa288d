"""Helpers for tests that damage model folders: a real folder to start from (written by
``resnet-search train`` before ``model.json`` had a typed reader: schema version 1 as it
shipped), every key path of its ``model.json``, and edits of the JSON and of the
safetensors file (a dtype changed in the header, a byte changed), with or without the
recorded checksum brought up to date."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

# A 3-class model (blue, green, red) of 32 px images, 5,147 params; its data is not needed.
OLD_FOLDER = Path(__file__).parent / "fixtures" / "model_v1"
OLD_INFO: dict[str, Any] = json.loads((OLD_FOLDER / "model.json").read_text())

# Dtypes of safetensors by their size in bytes: a header may claim another of the same size
# and the file still has the right length.
SAME_SIZE = {
    8: ["F64", "I64", "U64"],
    4: ["F32", "I32", "U32"],
    2: ["F16", "BF16", "I16", "U16"],
    1: ["I8", "U8", "BOOL"],
}
DTYPE_SIZE = {dtype: size for size, dtypes in SAME_SIZE.items() for dtype in dtypes}


def copy_folder(where: Path, source: Path = OLD_FOLDER) -> Path:
    """A copy of ``source`` that a test may damage (only the three files a folder needs)."""
    where.mkdir(parents=True)
    for name in ("model.json", "config.yaml", "model.safetensors"):
        shutil.copy(source / name, where / name)
    return where


def key_paths(node: Any, here: tuple = ()) -> list[tuple]:
    """Every key path of a JSON document (mapping keys only), outermost first."""
    out = []
    if isinstance(node, dict):
        for key, child in node.items():
            out.append((*here, key))
            out += key_paths(child, (*here, key))
    return out


def display(path: tuple) -> str:
    """``('data', 'counts', 'val')`` -> ``data.counts.val``, as errors name keys."""
    return ".".join(str(key) for key in path)


def edited(document: dict, path: tuple, value: Any = None, *, delete: bool = False) -> dict:
    """A copy of ``document`` with the value at ``path`` replaced (or deleted)."""
    out = copy.deepcopy(document)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)
    return out


def write_info(folder: Path, document: Any) -> None:
    (folder / "model.json").write_text(json.dumps(document), encoding="utf-8")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_checksum(folder: Path) -> None:
    """Bring ``weights.sha256`` of ``model.json`` up to date with the weights file, as someone who
    edited both would."""
    document = json.loads((folder / "model.json").read_text())
    document["weights"]["sha256"] = sha256(folder / "model.safetensors")
    write_info(folder, document)


def read_header(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's JSON header and the tensor bytes after it."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_header(path: Path, header: dict, body: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def change_dtype(path: Path, tensor: str, dtype: str) -> None:
    """Rewrite the header of ``path`` so that ``tensor`` claims ``dtype`` (of the same byte size)."""
    header, body = read_header(path)
    assert DTYPE_SIZE[header[tensor]["dtype"]] == DTYPE_SIZE[dtype]
    header[tensor]["dtype"] = dtype
    write_header(path, header, body)


def change_byte(path: Path, offset: int, xor: int = 0x5A) -> None:
    """Change one byte of ``path`` (``offset`` from the start; negative from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= xor or 1
    path.write_bytes(bytes(data))


def float32_tensors(path: Path) -> list[str]:
    header, _ = read_header(path)
    return [name for name, entry in header.items() if name != "__metadata__" and entry["dtype"] == "F32"]


def set_value(path: Path, tensor: str, value: float) -> None:
    """Overwrite the first element of a float32 ``tensor`` in place (the header stays as it is)."""
    header, _ = read_header(path)
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    start = 8 + length + header[tensor]["data_offsets"][0]
    data[start : start + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))
