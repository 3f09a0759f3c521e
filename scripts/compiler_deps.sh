#!/usr/bin/env bash
# A C++ compiler for DeepSpeed's JIT-built ops (CPU Adam for an offloaded optimizer, fused Adam): the DeepSpeed
# tests build CPU Adam once into TORCH_EXTENSIONS_DIR. ninja comes from pip (a dependency of sllm).
#
#   bash scripts/compiler_deps.sh           install g++ when missing (needs root), else do nothing
#   bash scripts/compiler_deps.sh check     exit 0 when g++ is there, 1 otherwise; installs nothing
set -euo pipefail

die() { echo "compiler_deps: $*" >&2; exit 1; }

have_gxx() { command -v g++ >/dev/null 2>&1; }

case "${1:-install}" in
  install)
    if have_gxx; then
      echo "compiler_deps: $(g++ --version | head -1)"
      exit 0
    fi
    [ "$(id -u)" -eq 0 ] || die "g++ missing; run as root: apt-get install -y --no-install-recommends g++"
    command -v apt-get >/dev/null 2>&1 || die "g++ missing, and apt-get is not available on this machine"
    export DEBIAN_FRONTEND=noninteractive
    # a stale package list may lack a candidate: refresh once and retry
    apt-get install -y -qq --no-install-recommends g++ >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ >/dev/null; } \
      || die "apt-get install g++ failed"
    have_gxx || die "g++ still missing after install"
    echo "compiler_deps: installed $(g++ --version | head -1)"
    ;;
  check)
    have_gxx && { echo "compiler_deps: ok"; exit 0; }
    echo "compiler_deps: g++ missing" >&2; exit 1 ;;
  *) die "usage: $0 [install|check]" ;;
esac
