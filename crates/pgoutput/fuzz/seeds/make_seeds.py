#!/usr/bin/env python3
"""Writes the seed inputs in seeds/decode/ (run from the fuzz folder).

Layouts follow the "Logical Replication Message Formats" docs. A seed is
either one bare message, or a stream of messages each prefixed with a u8
length, which is how the fuzz target splits input for the StreamDecoder.
"""
import os
import struct

def s(x): return x.encode() + b"\0"
def text(v): return b"t" + struct.pack(">i", len(v)) + v

OID = 16385
rel = b"R" + struct.pack(">I", OID) + s("public") + s("outbox") + b"d" + struct.pack(">h", 2) \
    + b"\x01" + s("id") + struct.pack(">Ii", 2950, -1) + b"\x00" + s("payload") + struct.pack(">Ii", 3802, -1)
begin = b"B" + struct.pack(">qqI", 0x100, 0, 7)
ins = b"I" + struct.pack(">I", OID) + b"N" + struct.pack(">h", 2) + text(b"1") + text(b'{"a":1}')
upd = b"U" + struct.pack(">I", OID) + b"K" + struct.pack(">h", 2) + text(b"1") + b"n" \
    + b"N" + struct.pack(">h", 2) + text(b"2") + b"u"
dele = b"D" + struct.pack(">I", OID) + b"O" + struct.pack(">h", 2) + text(b"2") + b"b" + struct.pack(">i", 1) + b"\x00"
trunc = b"T" + struct.pack(">iB", 1, 3) + struct.pack(">I", OID)
msg = b"M" + b"\x01" + struct.pack(">q", 0xF0) + s("outbox") + struct.pack(">i", 3) + b"abc"
origin = b"O" + struct.pack(">q", 5) + s("node")
typ = b"Y" + struct.pack(">I", 99) + s("app") + s("mood")
commit = b"C" + b"\x00" + struct.pack(">qqq", 0x100, 0x130, 0)

singles = dict(rel=rel, begin=begin, insert=ins, update=upd, delete=dele, truncate=trunc,
               message=msg, origin=origin, type=typ, commit=commit)
os.makedirs("seeds/decode", exist_ok=True)
for name, data in singles.items():
    with open(f"seeds/decode/{name}", "wb") as f:
        f.write(data)
stream = [rel, begin, origin, typ, ins, upd, dele, trunc, msg, commit]
with open("seeds/decode/stream", "wb") as f:
    for m in stream:
        assert len(m) < 256
        f.write(bytes([len(m)]) + m)
