#!/usr/bin/env bash
# Makes sure that what building popek loads is there and works, installs what
# is missing (Debian packages, through apt-get as root or with sudo), checks
# again afterwards, and otherwise stops naming the package and the command.
#
# What the build needs (the Unicorn engine's build script, unicorn-engine-sys):
#   - cargo (a Rust toolchain; not installed here);
#   - a C compiler that links a program (gcc, libc6-dev);
#   - cmake that configures a C project (with Ninja when ninja is present, as
#     the build script chooses);
#   - libclang for bindgen: a library that clang-sys 1.9 finds by its own
#     search (LIBCLANG_PATH, else the directories below, files `libclang.so`,
#     `libclang-*.so`, `libclang.so.*`, `libclang-*.so.*`, highest version
#     first) and that really is libclang: it loads, has the C API and parses a
#     translation unit that includes the C headers bindgen needs. A library
#     such as libclang-cpp.so.14 matches the file names but is not libclang.
#
# What only the tests need (with --test): a headless Chromium (Debian package
# chromium) that loads a page from disk, runs its JavaScript and dumps the
# DOM, as the HTML report's test (tests/html.rs) does.
#
# Usage: ensure-deps.sh [--check] [--test]
#   --check: report only, install nothing
#   --test:  also what the tests need
set -euo pipefail

check_only=0
for_tests=0
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        --test) for_tests=1 ;;
        *) echo "usage: $0 [--check] [--test]" >&2; exit 2 ;;
    esac
done

say() { echo "popek setup: $*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The libclang files clang-sys would consider, in its order of preference.
libclang_candidates() {
    local pats=(libclang.so 'libclang-*.so' 'libclang.so.*' 'libclang-*.so.*')
    local dirs
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        # A file of a matching name, or a directory holding one.
        if [ -f "$LIBCLANG_PATH" ]; then
            echo "$LIBCLANG_PATH"
            return
        fi
        dirs=("$LIBCLANG_PATH")
    else
        dirs=()
        if command -v llvm-config >/dev/null 2>&1; then
            local p
            p=$(llvm-config --prefix 2>/dev/null || true)
            [ -n "$p" ] && dirs+=("$p/bin" "$p/lib" "$p/lib64")
        fi
        local d
        local IFS_SAVE=$IFS
        IFS=:
        for d in ${LD_LIBRARY_PATH:-} ${LIBRARY_PATH:-}; do
            [ -d "$d" ] && dirs+=("$d")
        done
        IFS=$IFS_SAVE
        for d in /usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib* \
                 /usr/lib*/*/* /usr/lib*/* /usr/lib*; do
            [ -d "$d" ] && dirs+=("$d")
        done
    fi
    local d pat f
    for d in "${dirs[@]}"; do
        for pat in "${pats[@]}"; do
            for f in "$d"/$pat; do
                [ -f "$f" ] && echo "$f"
            done
        done
    done
}

# clang-sys's version key of a file name, as a sortable string.
version_key() {
    local name v
    name=$(basename "$1")
    case "$name" in
        libclang.so.*) v=${name#libclang.so.} ;;
        libclang-*) v=${name:9:${#name}-12} ;;
        *) v="" ;;
    esac
    local key="" part
    IFS=. read -r -a parts <<<"$v"
    for part in "${parts[@]}" 0 0 0; do
        [[ "$part" =~ ^[0-9]+$ ]] || part=0
        key+=$(printf '%06d.' "$part")
    done
    echo "${key:0:28}"
}

# The library clang-sys would pick: the highest version, earliest found.
libclang_choice() {
    local best="" best_key="" f k
    while IFS= read -r f; do
        k=$(version_key "$f")
        if [ -z "$best" ] || [[ "$k" > "$best_key" ]]; then
            best=$f
            best_key=$k
        fi
    done < <(libclang_candidates)
    echo "$best"
}

cc_works() {
    command -v cc >/dev/null 2>&1 || return 1
    printf '#include <stdio.h>\nint main(void){puts("ok");return 0;}\n' >"$work/t.c"
    cc -o "$work/t" "$work/t.c" >/dev/null 2>&1 && [ "$("$work/t")" = ok ]
}

cmake_works() {
    command -v cmake >/dev/null 2>&1 || return 1
    # A fresh build directory each time: a cache of another generator
    # (before ninja was installed) would make cmake refuse.
    rm -rf "$work/cm"
    mkdir -p "$work/cm/src"
    printf 'cmake_minimum_required(VERSION 3.5)\nproject(probe C)\nadd_executable(probe main.c)\n' \
        >"$work/cm/src/CMakeLists.txt"
    printf 'int main(void){return 0;}\n' >"$work/cm/src/main.c"
    local gen=()
    command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
    cmake "${gen[@]}" -S "$work/cm/src" -B "$work/cm/build" >"$work/cm/log" 2>&1 &&
        cmake --build "$work/cm/build" >>"$work/cm/log" 2>&1
}

# Loads the library as bindgen does (dlopen), checks the C API, and parses a
# header that includes what Unicorn's headers include.
libclang_works() {
    local lib=$1
    [ -n "$lib" ] || return 1
    cat >"$work/lc.c" <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
typedef struct { const void *data; unsigned flags; } CXString;
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "cannot load: %s\n", dlerror()); return 1; }
    CXString (*ver)(void) = (CXString (*)(void))dlsym(h, "clang_getClangVersion");
    const char *(*cstr)(CXString) = (const char *(*)(CXString))dlsym(h, "clang_getCString");
    void *(*index)(int, int) = (void *(*)(int, int))dlsym(h, "clang_createIndex");
    void *(*parse)(void *, const char *, const char *const *, int, void *, unsigned, unsigned) =
        (void *(*)(void *, const char *, const char *const *, int, void *, unsigned, unsigned))
            dlsym(h, "clang_parseTranslationUnit");
    unsigned (*ndiag)(void *) = (unsigned (*)(void *))dlsym(h, "clang_getNumDiagnostics");
    if (!ver || !cstr || !index || !parse || !ndiag) {
        fprintf(stderr, "not libclang: the clang C API is missing\n");
        return 1;
    }
    void *tu = parse(index(0, 0), argv[2], 0, 0, 0, 0, 0);
    if (!tu) { fprintf(stderr, "cannot parse a C header\n"); return 1; }
    unsigned n = ndiag(tu);
    if (n) { fprintf(stderr, "parsing a C header gave %u diagnostics (missing clang headers?)\n", n); return 1; }
    printf("%s\n", cstr(ver()));
    return 0;
}
EOF
    printf '#include <stdint.h>\n#include <stddef.h>\n#include <stdbool.h>\n#include <stdarg.h>\n#include <stdlib.h>\nint probe(void);\n' \
        >"$work/probe.h"
    : >"$work/lc.err"
    if ! cc -o "$work/lc" "$work/lc.c" -ldl >/dev/null 2>&1; then
        echo "the libclang probe does not compile (no working C compiler)" >"$work/lc.err"
        return 1
    fi
    "$work/lc" "$lib" "$work/probe.h" >"$work/lc.out" 2>"$work/lc.err"
}

# The Chromium the tests run: the first of these names on PATH.
chromium_bin() {
    local b
    for b in chromium chromium-browser; do
        if command -v "$b" >/dev/null 2>&1; then
            command -v "$b"
            return 0
        fi
    done
    return 1
}

# Loads a page from disk in headless Chromium, the way tests/html.rs does,
# and checks that its script ran (the dumped DOM holds what the script wrote).
chromium_works() {
    local bin
    bin=$(chromium_bin) || return 1
    printf '<!doctype html><title>probe</title><p id="p">static</p><script>document.getElementById("p").textContent = "rendered" + "-by-script";</script>\n' \
        >"$work/probe.html"
    : >"$work/chromium.err"
    timeout 120 "$bin" --headless --no-sandbox --disable-gpu --no-first-run \
        --user-data-dir="$work/chromium-profile" --dump-dom "file://$work/probe.html" \
        >"$work/chromium.out" 2>"$work/chromium.err" &&
        grep -q 'rendered-by-script' "$work/chromium.out"
}

# Fills `missing` with the Debian packages whose absence the checks show.
check_all() {
    missing=()
    problems=()
    if ! cc_works; then
        missing+=(gcc libc6-dev)
        problems+=("no working C compiler (cc)")
    fi
    command -v make >/dev/null 2>&1 || { missing+=(make); problems+=("no make"); }
    command -v ninja >/dev/null 2>&1 || { missing+=(ninja-build); problems+=("no ninja"); }
    if ! cmake_works; then
        missing+=(cmake)
        problems+=("cmake missing or cannot configure a C project")
    fi
    lib=$(libclang_choice)
    if ! libclang_works "$lib"; then
        missing+=(libclang-dev)
        if [ -z "$lib" ]; then
            problems+=("no libclang for bindgen")
        else
            problems+=("bindgen would load $lib, which does not work: $(head -1 "$work/lc.err" 2>/dev/null || true)")
        fi
    fi
    if [ "$for_tests" -eq 1 ] && ! chromium_works; then
        missing+=(chromium)
        if chromium_bin >/dev/null; then
            problems+=("$(chromium_bin) --headless does not render a page: $(grep -v '^$' "$work/chromium.err" 2>/dev/null | tail -1 || true)")
        else
            problems+=("no chromium (the HTML report's test renders the page in headless Chromium)")
        fi
    fi
}

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is not installed: install a Rust toolchain (rustup, or Debian's 'apt-get install cargo')"
    exit 1
fi

check_all
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
for p in "${problems[@]}"; do say "$p"; done
if [ "$check_only" -eq 1 ]; then
    say "missing: ${missing[*]} (install with: apt-get install -y ${missing[*]})"
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo)
else
    say "missing build dependencies: ${missing[*]}"
    say "install them as root: apt-get install -y ${missing[*]}"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here; install the equivalents of: ${missing[*]}"
    exit 1
fi
say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get update -qq >"$work/apt.log" 2>&1; then
    cat "$work/apt.log" >&2
    say "apt-get update failed; run: ${as_root[*]} apt-get update && ${as_root[*]} apt-get install -y ${missing[*]}"
    exit 1
fi
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$work/apt.log" 2>&1; then
    cat "$work/apt.log" >&2
    say "installing failed; run: ${as_root[*]} apt-get install -y ${missing[*]}"
    exit 1
fi

# Check again: what was installed must be what the build loads.
wanted=("${missing[@]}")
check_all
if [ ${#missing[@]} -gt 0 ]; then
    for p in "${problems[@]}"; do say "$p"; done
    say "still missing after installing ${wanted[*]}: ${missing[*]}"
    say "install by hand: apt-get install -y ${missing[*]} (or set LIBCLANG_PATH to the directory of a working libclang)"
    exit 1
fi
ready="$(cat "$work/lc.out"), $(cmake --version | head -1), $(cc --version | head -1)"
if [ "$for_tests" -eq 1 ]; then
    ready+=", $("$(chromium_bin)" --version 2>/dev/null | head -1)"
fi
say "ready: $ready"
