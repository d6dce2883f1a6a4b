"""The files a dataset is read from: what `data.root` may be, and which of a dataset's files
are present but damaged, and why (a cut-short download, a file overwritten by something
else). `images._load` looks for damage once torchvision has failed, so that the error names
the file to replace instead of saying "not found"."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Annotated

from ewcexp.config.schema import Rule


def _not_a_file(value: object) -> bool:
    """A folder, or a path not created yet; a path the check cannot look at (a folder without
    permission, `~nobody`) passes here and is reported where the data is read."""
    if not isinstance(value, str):
        return False
    try:
        path = Path(value).expanduser()
        return not path.exists() or path.is_dir()
    except (OSError, RuntimeError):
        return True


# where the datasets live: a folder, or a path a download may create
DataRoot = Annotated[
    str, Rule(_not_a_file, "a folder (or a path not created yet), not a file", "/dev/null")
]


def is_cifar(dataset_class: type) -> bool:
    """CIFAR-style (pickled batches with md5 sums) rather than MNIST-style (IDX files)."""
    return hasattr(dataset_class, "base_folder")


def damaged_files(dataset_class: type, folder: Path, files: list[str]) -> dict[str, str]:
    """The files of `folder` that are present but cannot be what torchvision reads, each with
    why: an IDX file whose header does not match its size, a CIFAR file failing torchvision's
    own md5. Absent files are not listed: they only need fetching, not replacing."""
    md5s = {}
    if is_cifar(dataset_class):  # the table torchvision checks them against
        entries = [*dataset_class.train_list, *dataset_class.test_list]
        md5s = {name: md5 for name, md5 in entries}
        md5s[dataset_class.meta["filename"]] = dataset_class.meta["md5"]
    damaged = {}
    for name in files:
        path = folder / name
        if not path.exists():
            continue
        reason = md5_damage(path, md5s[name]) if md5s else idx_damage(path)
        if reason:
            damaged[name] = reason
    return damaged


def md5_damage(path: Path, md5: str) -> str | None:
    """Why the file at `path` is damaged (its md5 is not `md5`), or None."""
    from torchvision.datasets.utils import check_integrity

    if not path.is_file():
        return "not a file"
    return None if check_integrity(str(path), md5) else "md5 differs from torchvision's"


IDX_UNSIGNED_BYTES = 0x08  # IDX type code; torchvision's MNIST-style classes accept no other


def idx_damage(path: Path) -> str | None:
    """Why the IDX file at `path` is damaged, or None when its header (magic number: two zero
    bytes, the type, the number of dimensions; then each dimension's size) fits its length.
    The number of dimensions expected is in the file's name: `...-idx3-ubyte` has 3."""
    named = re.search(r"idx(\d)", path.name)
    dims = int(named[1]) if named else None
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            magic = file.read(4)
            if len(magic) < 4:
                return f"truncated: {size} bytes, not even a header"
            if magic[:3] != bytes([0, 0, IDX_UNSIGNED_BYTES]) or (dims and magic[3] != dims):
                wanted = f"000008{dims:02x}" if dims else "000008.."
                return f"not an IDX file of bytes: magic 0x{magic.hex()}, expected 0x{wanted}"
            sizes = file.read(4 * magic[3])
    except OSError as error:
        return error.strerror or type(error).__name__
    if len(sizes) < 4 * magic[3]:
        return f"truncated: {size} bytes, its header cut short"
    shape = struct.unpack(f">{magic[3]}I", sizes)
    needed = 4 + len(sizes) + math.prod(shape)
    shape_text = "x".join(map(str, shape))
    if size < needed:
        return f"truncated: {size:,} bytes where its header ({shape_text}) announces {needed:,}"
    if size > needed:
        return f"{size:,} bytes where its header ({shape_text}) announces {needed:,}"
    return None
