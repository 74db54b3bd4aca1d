#!/usr/bin/env python3
"""Flash and static RAM of the C example by where they come from, read off the linker's map.

    python3 scripts/c-example-size.py examples/c/build/BOARD/example.map

Every input section the linker placed is counted once, under its output section (flash:
.text, .ARM.exidx and .data's load image; RAM: .data and .bss) and its origin: the tinybayes
static library (libtinybayes_c.a: the engine, its Rust dependencies and compiler builtins),
libgcc, the example's C code, the embedded model and the embedded images. Prints a Markdown
table (bytes).
"""

import re
import sys

PLACED = re.compile(r"^\s*(\S+)?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")


def origin(section, source):
    if "libtinybayes_c.a" in source:
        return "tinybayes library"
    if "libgcc.a" in source:
        return "libgcc"
    if section.startswith(".rodata.tinybayes_model") or section.endswith("model_len"):
        return "model"
    if section.startswith(".rodata.tinybayes_images"):
        return "images"
    return "example C code"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: c-example-size.py MAP")
    lines = open(sys.argv[1], encoding="utf-8").read().split("Linker script and memory map", 1)[1]
    sizes = {}
    output, pending = None, None
    for line in lines.splitlines():
        top = re.match(r"^(\.[\w.]+)\b", line)
        if top:
            output = top.group(1)
            continue
        bare = re.match(r"^ (\.\S+)$", line)
        if bare:  # a long input section name: its address, size and file are on the next line
            pending = bare.group(1)
            continue
        m = PLACED.match(line)
        if m and output in (".text", ".ARM.exidx", ".data", ".bss"):
            section = m.group(1) or pending or ""
            size = int(m.group(3), 16)
            source = m.group(4)
            pending = None
            if size == 0 or not section.startswith("."):
                continue
            key = origin(section, source)
            flash = size if output in (".text", ".ARM.exidx", ".data") else 0
            ram = size if output in (".data", ".bss") else 0
            f, r = sizes.get(key, (0, 0))
            sizes[key] = (f + flash, r + ram)
        else:
            pending = None
    print("| part | flash bytes | static RAM bytes |")
    print("|---|---:|---:|")
    total_flash = total_ram = 0
    for key in ("tinybayes library", "libgcc", "example C code", "model", "images"):
        f, r = sizes.get(key, (0, 0))
        total_flash += f
        total_ram += r
        print(f"| {key} | {f:,} | {r:,} |")
    print(f"| total | {total_flash:,} | {total_ram:,} |")


if __name__ == "__main__":
    main()
