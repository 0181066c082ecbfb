#!/usr/bin/env bash
# Creates or refreshes the project virtualenv (.venv) and the Label Studio fixture venv (.venv-ls).
# Both live in a per-user cache and are refreshed only when a hash of the dependency files changes,
# so a fresh clone on the same machine reuses them; .venv and .venv-ls are symlinks into the cache.
# Label Studio gets its own venv because its OpenCV/Django pins clash with Ultralytics'.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${LABELLOOP_CACHE:-$HOME/.cache/labelloop}"
mkdir -p "$cache"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
LS_VERSION="1.23.2"
quiet() { "$@" 2>&1 | grep -v -e "^WARNING: Location" -e "is ignored" || true; return "${PIPESTATUS[0]}"; }

ensure_venv() {  # dir stamp-hash install-function
  local dir="$1" want="$2" fn="$3"
  if [ "$(cat "$dir/.deps-hash" 2>/dev/null)" = "$want" ]; then return 0; fi
  echo "[bootstrap] installing dependencies into $dir (cached until the dependency files change)" >&2
  [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
  quiet "$dir/bin/python" -m pip install -q --upgrade pip
  PY="$dir/bin/python" "$fn"
  echo "$want" > "$dir/.deps-hash"
}

install_main() {
  # torch pinned to the build on this machine's disk (pip, not uv, sees it); CPU works, CUDA is used when present.
  quiet "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  quiet "$PY" -m pip install -q -e ".[dev]"
  # Ultralytics pulls opencv-python (needs libGL); the headless build serves the same API on servers.
  quiet "$PY" -m pip install -q --force-reinstall --no-deps "opencv-python-headless<5"
}
install_ls() { quiet "$PY" -m pip install -q "label-studio==$LS_VERSION"; }

what="${1:-all}"
if [ "$what" = all ] || [ "$what" = main ]; then
  ensure_venv "$cache/venv-main" "$(cat pyproject.toml | sha256sum | cut -c1-16)" install_main
  ln -sfn "$cache/venv-main" "$root/.venv"
  # the editable install points at one checkout; repoint it when this venv was built from another
  # clone (checked from / so the current directory can't shadow the installed mapping)
  if ! (cd / && "$root/.venv/bin/python" - "$root" <<'PY' 2>/dev/null); then
import os, sys
import labelloop.backend
sys.exit(0 if os.path.realpath(labelloop.backend.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep) else 1)
PY
    quiet .venv/bin/python -m pip install -q --no-deps -e .
  fi
fi
if [ "$what" = all ] || [ "$what" = ls ]; then
  ensure_venv "$cache/venv-ls" "$(echo "label-studio==$LS_VERSION" | sha256sum | cut -c1-16)" install_ls
  ln -sfn "$cache/venv-ls" "$root/.venv-ls"
fi
