#!/usr/bin/env bash
# Creates or refreshes the virtualenvs: the project's (.venv) and the Label Studio fixture's (.venv-ls).
# The heavy dependencies live in a per-user cache, one venv per hash of the dependency lists, so a
# fresh clone on this machine reuses them. Each checkout's .venv is its own small venv that sees the
# cached dependencies (a .pth file) and installs THIS checkout's code on top (editable, no deps), so
# two clones never run each other's code. Label Studio gets its own venv: its OpenCV/Django pins
# clash with Ultralytics'.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${LABELLOOP_CACHE:-$HOME/.cache/labelloop}"
mkdir -p "$cache"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
LS_VERSION="1.23.2"
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
quiet() { "$@" 2>&1 | grep -v -e "^WARNING: Location" -e "is ignored" || true; return "${PIPESTATUS[0]}"; }

ensure_venv() {  # dir install-function stamp: build once, marked complete by the stamp
  local dir="$1" fn="$2" stamp="$1/.complete-${3:-deps}"
  [ -f "$stamp" ] && return 0
  echo "[bootstrap] installing dependencies into $dir (cached until the dependency lists change)" >&2
  rm -rf "$dir"
  "$py" -m venv "$dir"
  quiet "$dir/bin/python" -m pip install -q --upgrade pip "setuptools>=69" wheel
  PY="$dir/bin/python" "$fn"
  touch "$stamp"
}

deps_list() {  # the project's dependencies (with dev extras) and the torch pins, one per line
  "$py" - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + [d for ds in p.get("optional-dependencies", {}).values() for d in ds]))
PY
  printf '%s\n' "${TORCH_PINS[@]}" "opencv-python-headless<5"
}

install_deps() {
  # torch pinned to the build on this machine's disk (pip, not uv, sees it); CPU works, CUDA is used when present.
  quiet "$PY" -m pip install -q "${TORCH_PINS[@]}"
  local reqs; reqs="$(mktemp)"; deps_list | grep -v -e '^torch' -e opencv-python-headless > "$reqs"
  quiet "$PY" -m pip install -q -r "$reqs"; rm -f "$reqs"
  # Ultralytics pulls opencv-python (needs libGL); the headless build serves the same API on servers.
  quiet "$PY" -m pip install -q --force-reinstall --no-deps "opencv-python-headless<5"
}
install_ls() { quiet "$PY" -m pip install -q "label-studio==$LS_VERSION"; }

what="${1:-all}"
if [ "$what" = all ] || [ "$what" = main ]; then
  deps="$cache/venv-deps-$(deps_list | sort | sha256sum | cut -c1-16)"
  ensure_venv "$deps" install_deps
  site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'; }
  if [ -L .venv ] || [ ! -x .venv/bin/python ] || ! grep -qs "$deps" "$(site_of .venv 2>/dev/null || echo /x)/_labelloop_deps.pth"; then
    rm -rf .venv
    "$deps/bin/python" -m venv --without-pip .venv
    echo "import site; site.addsitedir('$(site_of "$deps")')" > "$(site_of .venv)/_labelloop_deps.pth"
    ln -sfn "$deps/bin/ruff" .venv/bin/ruff
  fi
  # this checkout's code, editable, on top of the cached dependencies; redone when pyproject.toml
  # changes (entry points, package list)
  project_hash="$(sha256sum pyproject.toml | cut -c1-16)"
  if [ "$(cat .venv/.project-hash 2>/dev/null)" != "$project_hash" ]; then
    quiet .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
    echo "$project_hash" > .venv/.project-hash
  fi
fi
if [ "$what" = all ] || [ "$what" = ls ]; then
  ensure_venv "$cache/venv-ls" install_ls "label-studio-$LS_VERSION"
  ln -sfn "$cache/venv-ls" "$root/.venv-ls"
fi
