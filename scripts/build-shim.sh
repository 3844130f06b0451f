#!/usr/bin/env bash
# Builds the exec shim into $1 (make shim; and setup.py, so wheels carry it). It is loaded into
# every process of a tool, so it is made cheap to load: stripped, no start files, its few libc
# symbols bound once at load (a forked child then binds nothing), two segments.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$(dirname "$1")"
"${CC:-cc}" -shared -fPIC -O2 -Wall -Wextra -Werror -fno-tree-loop-distribute-patterns -s -nostartfiles \
    -o "$1" shim/libjobnest_exec.c \
    -Wl,--version-script=shim/exports.map -Wl,-z,now -Wl,-z,norelro -Wl,-z,noseparate-code
