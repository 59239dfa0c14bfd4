#!/usr/bin/env python3
"""Exits non-zero unless every argument is a complete, valid PNG image: the signature, every chunk's
CRC, an IHDR with a non-empty size first, image data that inflates to exactly the size the header
implies, and IEND last. Standard library only. Usage: check_png.py FILE..."""
import struct
import sys
import zlib

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def check(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "not a PNG (bad signature)"
    pos, chunks, idat = 8, [], b""
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if len(body) != length or zlib.crc32(kind + body) != crc:
            return "chunk %r at byte %d is truncated or fails its CRC" % (kind, pos)
        chunks.append((kind, body))
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND" or pos != len(data):
        return "chunks out of order or trailing bytes"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if width == 0 or height == 0 or interlace != 0 or colour not in CHANNELS:
        return "unexpected header %dx%d colour %d interlace %d" % (width, height, colour, interlace)
    row = 1 + (width * CHANNELS[colour] * depth + 7) // 8
    if len(zlib.decompress(idat)) != row * height:
        return "image data does not match %dx%d" % (width, height)
    return None


failed = False
for path in sys.argv[1:]:
    try:
        problem = check(path)
    except (OSError, zlib.error, struct.error) as e:
        problem = str(e)
    if problem:
        print("%s: %s" % (path, problem))
        failed = True
sys.exit(1 if failed or len(sys.argv) < 2 else 0)
