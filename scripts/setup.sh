#!/usr/bin/env bash
# Installs what building, testing and emulating tinybayes needs, skipping what is present:
# the four thumb targets, rustfmt and clippy, QEMU (qemu-system-arm), the Arm C compiler
# (arm-none-eabi-gcc, for the C API's example), defmt-print, and Python 3 with numpy (the
# reference forward pass of the `tinybayes import` test).
set -euo pipefail

say() { printf '==> %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
    echo "error: cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi

targets=(thumbv6m-none-eabi thumbv7m-none-eabi thumbv7em-none-eabihf thumbv8m.main-none-eabihf)
installed=$(rustup target list --installed)
missing=()
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "rustup target add ${missing[*]}"
    rustup target add "${missing[@]}"
fi
for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || { say "rustup component add $c"; rustup component add "$c"; }
done

packages=()
command -v qemu-system-arm >/dev/null || packages+=(qemu-system-arm)
command -v arm-none-eabi-gcc >/dev/null || packages+=(gcc-arm-none-eabi)
command -v python3 >/dev/null || packages+=(python3 python3-pip)
if [ ${#packages[@]} -gt 0 ]; then
    say "installing ${packages[*]} (apt-get)"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! python3 -c 'import numpy' 2>/dev/null; then
    say "python3 -m pip install --quiet numpy"
    # A system Python managed by the distribution refuses pip: take its own numpy package then.
    if ! python3 -m pip install --quiet numpy; then
        say "pip refused: installing python3-numpy (apt-get)"
        sudo_cmd=()
        [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3-numpy >/dev/null
    fi
fi

if ! command -v defmt-print >/dev/null; then
    say "cargo install defmt-print (about 80 s)"
    cargo install defmt-print --locked --quiet
fi
say "tools ready: $(qemu-system-arm --version | head -1), $(arm-none-eabi-gcc --version | head -1), $(defmt-print --version 2>/dev/null | head -1), numpy $(python3 -c 'import numpy; print(numpy.__version__)')"
