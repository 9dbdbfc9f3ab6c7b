#!/usr/bin/env bash
# Idempotent set-up for lrl on Debian/Ubuntu (root or sudo) or any machine that already has the
# system packages: apt packages -> .venv -> torch (first) -> lrl (editable) -> KenLM lmplz/build_binary.
# A second run changes nothing: each step checks before it acts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${LRL_TORCH_SPEC:-torch==2.13.0}"   # GPU users: install your CUDA torch into .venv first; it is kept.
KENLM_VERSION="0.3.0"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lrl"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. System packages ------------------------------------------------------------------------------
APT_PKGS=(ffmpeg espeak-ng cmake g++ make libboost-program-options-dev libboost-system-dev
          libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
    say "missing system packages: ${missing[*]}; install them as root and rerun"; exit 1
  fi
  say "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "system packages present"
fi

# 2. Virtual environment --------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

# 3. torch first (a bare 'torch' requirement would pull the CUDA build) ---------------------------
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  say "installing $TORCH_SPEC"
  "${PIP[@]}" "$TORCH_SPEC"
else
  say "torch present: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
fi

# 4. lrl itself, editable, with dev tools; redone only when pyproject.toml changes -----------------
STAMP="$VENV/.lrl-pyproject.sha256"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ] || ! "$VENV/bin/python" -c "import lrl" 2>/dev/null; then
  say "installing lrl (editable) and its dependencies"
  "${PIP[@]}" -e "$ROOT[dev]"
  echo "$want" > "$STAMP"
else
  say "lrl installed, pyproject.toml unchanged"
fi

# 5. KenLM binaries: built once from the kenlm sdist, cached in $CACHE, copied into the venv -------
if [ -x "$VENV/bin/lmplz" ] && [ -x "$VENV/bin/build_binary" ]; then
  say "KenLM lmplz/build_binary present"
else
  KBIN="$CACHE/kenlm-$KENLM_VERSION/bin"
  if [ ! -x "$KBIN/lmplz" ] || [ ! -x "$KBIN/build_binary" ]; then
    # The build (pip download, cmake, make) prints hundreds of compiler warnings: they go to a log, and
    # only a failure shows the log's tail.
    LOG="$CACHE/kenlm-build.log"
    mkdir -p "$CACHE"
    say "building KenLM $KENLM_VERSION lmplz/build_binary (about a minute; output in $LOG)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    build_kenlm() {
      # --no-binary kenlm (not :all:, which would compile cmake itself from source)
      "$VENV/bin/pip" download --disable-pip-version-check --no-deps --no-binary kenlm \
        "kenlm==$KENLM_VERSION" -d "$work" \
      && tar -xzf "$work"/kenlm-*.tar.gz -C "$work" \
      && src="$(find "$work" -maxdepth 1 -type d -name 'kenlm-*' | head -n1)" \
      && mkdir -p "$src/build" && cd "$src/build" \
      && cmake .. -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF -DENABLE_PYTHON=OFF \
      && make -j"$(nproc)" lmplz build_binary
    }
    if ! (set -x; build_kenlm) >"$LOG" 2>&1; then
      say "KenLM build failed; full log: $LOG (last 30 lines below)"
      tail -n 30 "$LOG" >&2
      exit 1
    fi
    src="$(find "$work" -maxdepth 1 -type d -name 'kenlm-*' | head -n1)"
    mkdir -p "$KBIN"
    cp "$src/build/bin/lmplz" "$src/build/bin/build_binary" "$KBIN/"
  fi
  cp "$KBIN/lmplz" "$KBIN/build_binary" "$VENV/bin/"
  say "KenLM binaries installed into $VENV/bin"
fi
say "done"
