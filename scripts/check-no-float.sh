#!/usr/bin/env bash
# Proves that a firmware image has no floating-point code: lists the ELF's symbols and fails if
# any soft-float routine (the ARM EABI helpers __aeabi_f* / __aeabi_d* and the libgcc /
# compiler-builtins names such as __addsf3, __mulsf3, __floatsisf, __fixsfsi, __aeabi_i2f) is
# linked. On a core without an FPU every float operation calls one of them.
#
# usage: scripts/check-no-float.sh ELF
set -euo pipefail
elf=${1:?usage: scripts/check-no-float.sh ELF}
nm_tool=$(command -v llvm-nm || command -v nm || true)
if [ -z "$nm_tool" ]; then
    echo "error: neither llvm-nm nor nm is installed" >&2
    exit 2
fi
symbols=$("$nm_tool" "$elf")
if [ "$(grep -c . <<<"$symbols")" -lt 10 ]; then
    echo "error: $elf has no symbol table to check" >&2
    exit 2
fi
float=$(grep -E ' (__aeabi_[fd][a-z0-9]+|__aeabi_[iul]+2[fd]|__aeabi_[fd]2[a-z]+|__(add|sub|mul|div|neg|cmp|eq|ne|lt|le|gt|ge|unord)[sd]f[23]|__(float|fix|fixuns)[a-z]*[sd]f[a-z]*|__extendsfdf2|__truncdfsf2)$' <<<"$symbols" || true)
if [ -n "$float" ]; then
    echo "error: $elf links floating-point routines:" >&2
    echo "$float" >&2
    exit 1
fi
echo "no floating-point routines in $elf ($(grep -c . <<<"$symbols") symbols checked)"
