#!/usr/bin/env bash
# Headless Chromium and a Korean font for the nightly-report browser test
# (tests/integration/test_report_browser.py).
#
#   bash scripts/browser_deps.sh            install what is missing (needs root), else do nothing
#   bash scripts/browser_deps.sh check      exit 0 when everything is there, 1 otherwise; installs nothing
#
# Idempotent: when `chromium` is on PATH and a Korean font is known to fontconfig it returns at once.
# Non-interactive; `apt-get update` runs only when the package lists lack a candidate or an install fails.
set -euo pipefail

PKGS="chromium fonts-nanum"

die() { echo "browser_deps: $*" >&2; exit 1; }

have_chromium() { command -v chromium >/dev/null 2>&1; }

have_korean_font() {
  if command -v fc-list >/dev/null 2>&1; then
    [ -n "$(fc-list :lang=ko family 2>/dev/null)" ]
  else
    [ -e /usr/share/fonts/truetype/nanum/NanumGothic.ttf ]
  fi
}

missing_pkgs() {
  local out=()
  have_chromium || out+=(chromium)
  have_korean_font || out+=(fonts-nanum)
  echo "${out[*]:-}"
}

has_candidate() {  # has_candidate PKG: the local package lists know an installable version
  local cand
  cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

install_pkgs() {
  local missing
  missing=$(missing_pkgs)
  if [ -z "$missing" ]; then
    echo "browser_deps: chromium and a Korean font are already installed"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "missing: $missing; run as root: apt-get install -y --no-install-recommends $PKGS"
  command -v apt-get >/dev/null 2>&1 || die "missing: $missing, and apt-get is not available on this machine"
  export DEBIAN_FRONTEND=noninteractive
  local updated=0 p
  for p in $missing; do
    if ! has_candidate "$p"; then
      apt-get update -qq
      updated=1
      break
    fi
  done
  echo "browser_deps: installing $missing"
  # shellcheck disable=SC2086
  if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null; then
    # stale package lists (a security update moved a dependency): refresh once and retry
    [ "$updated" -eq 1 ] && die "apt-get install $missing failed"
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null || die "apt-get install $missing failed"
  fi
  command -v fc-cache >/dev/null 2>&1 && fc-cache -f >/dev/null 2>&1 || true
  missing=$(missing_pkgs)
  [ -z "$missing" ] || die "still missing after install: $missing"
  echo "browser_deps: ready ($(chromium --version 2>/dev/null || echo chromium))"
}

case "${1:-install}" in
  install) install_pkgs ;;
  check)
    missing=$(missing_pkgs)
    [ -z "$missing" ] && { echo "browser_deps: ok"; exit 0; }
    echo "browser_deps: missing $missing" >&2; exit 1 ;;
  *) die "usage: $0 [install|check]" ;;
esac
