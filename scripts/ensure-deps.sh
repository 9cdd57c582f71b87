#!/usr/bin/env bash
# Installs what building popek needs when it is missing: cmake, libclang
# (for bindgen) and ninja, which the Unicorn engine's build script uses.
# Runs apt-get as root, or through sudo; otherwise says what to install.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    missing+=(libclang-dev)
fi
command -v cc >/dev/null 2>&1 || missing+=(build-essential)

if [ ${#missing[@]} -gt 0 ]; then
    echo "popek: installing build dependencies: ${missing[*]}" >&2
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo)
    else
        echo "popek: missing build dependencies: ${missing[*]}" >&2
        echo "popek: install them as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "popek: cargo is not installed; install a Rust toolchain (https://rustup.rs or Debian's cargo package)" >&2
    exit 1
fi
