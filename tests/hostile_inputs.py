"""Hostile and odd inputs for the tests of every route that reads an image or a text, each a few kilobytes at most,
and the address-space cap under which the memory-heavy ones run.

Without the limits of `hf_unified.image_processing`, `thin_png()` (under 3 KB) asks a resize for gigabytes,
`png_header(20_000, 10_000)` trips PIL's decompression-bomb error, `png_header(12_000, 12_000)` (144 megapixels,
under PIL's bomb limit) would be decoded whole, `ztxt_bomb_png()` raises a `ValueError` out of PIL, and
`grey16_png(0.46)` turns white in PIL's `convert("RGB")`.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

# Run first in a subprocess (after its heavy imports and model loading): from then on an allocation of more than
# `headroom_gib` GiB fails at once with MemoryError (or torch's RuntimeError) instead of taking the machine's memory.
# The cap is relative to the process's address space at that point, which imports alone put at several GiB.
CAP_ADDRESS_SPACE = """
def cap_address_space(headroom_gib):
    import os, resource
    pages = int(open("/proc/self/statm").read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + int(headroom_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
"""


def png_bytes(image: Image.Image, **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def thin_png(width: int = 1_000_000, height: int = 1) -> bytes:
    """A valid black RGB PNG, `width` x `height` (1 x 1,000,000: under 3 KB, decodes to 3 MB; resized to a 36 px
    short side it is 36 x 36,000,000 px, 3.9 GB)."""
    return png_bytes(Image.new("RGB", (width, height)), optimize=True)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` RGB pixels and holds a few bytes of data: PIL reads the size from the
    header, so a check before decoding refuses it, and decoding it would fail (or, for a real one, cost gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def ztxt_bomb_png(characters: int = 20_000_000) -> bytes:
    """An 8 x 8 PNG with a compressed text chunk of `characters` characters (20 KB on disk, 20 MB inflated)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * characters, zip=True)
    return png_bytes(Image.new("RGB", (8, 8), (200, 30, 30)), pnginfo=info)


def grey16_png(fraction: float = 0.46, size: tuple[int, int] = (16, 12)) -> bytes:
    """A 16-bit greyscale PNG (PIL mode `I;16`) at `fraction` of full scale: 0.46 is 30,146 / 65,535, which an
    8-bit reading shows as 117 / 255, and PIL's `convert("RGB")` clips to 255."""
    samples = np.full(size[::-1], round(fraction * 65535), dtype=np.uint16)
    return png_bytes(Image.fromarray(samples))


def shapes_png(colour: tuple[int, int, int] = (30, 60, 200), size: tuple[int, int] = (48, 40)) -> bytes:
    """An ordinary RGB image: a coloured square on white."""
    image = Image.new("RGB", size, "white")
    image.paste(colour, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    return png_bytes(image)
