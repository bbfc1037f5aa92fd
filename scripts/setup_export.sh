#!/usr/bin/env bash
# What the export stage needs beyond envs/requirements.lock (docs/export.md), pinned and from
# the package index only: llama-cpp-python's source distribution vendors llama.cpp, whose
# convert_hf_to_gguf.py, convert_lora_to_gguf.py, their conversion/ package and gguf-py are copied to .venv/export/llama.cpp
# (seconds; they run with the project's own environment). With --build, llama-cpp-python is
# also compiled from that source into .venv/export/site (about 5 minutes on 2 cores): the
# load-back checks need it. Usage: scripts/setup_export.sh [--build]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
SDIST=llama_cpp_python-$VERSION.tar.gz
DEST=.venv/export
mkdir -p "$DEST/dist"
if [ ! -s "$DEST/dist/$SDIST" ]; then
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: \
    "llama_cpp_python==$VERSION" -d "$DEST/dist"
fi
if [ ! -f "$DEST/llama.cpp/VERSION" ] || [ "$(cat "$DEST/llama.cpp/VERSION")" != "$VERSION" ]; then
  rm -rf "$DEST/llama.cpp" "$DEST/unpack"
  mkdir -p "$DEST/unpack" "$DEST/llama.cpp"
  root=llama_cpp_python-$VERSION/vendor/llama.cpp
  tar -xzf "$DEST/dist/$SDIST" -C "$DEST/unpack" "$root/convert_hf_to_gguf.py" \
    "$root/convert_lora_to_gguf.py" "$root/conversion" "$root/gguf-py"
  mv "$DEST/unpack/$root/"* "$DEST/llama.cpp/"
  rm -rf "$DEST/unpack"
  echo "$VERSION" > "$DEST/llama.cpp/VERSION"
fi
built() {
  PYTHONPATH="$DEST/site" .venv/bin/python -c \
    "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null
}
if [ "${1:-}" = "--build" ] && ! built; then
  # llama.cpp is compiled for this CPU (-march=native), so a build is kept per version and
  # per CPU feature set, outside the checkout: a fresh clone on the same machine copies it
  # (seconds) instead of compiling again; another CPU gets a build of its own
  cpu=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | sha256sum | cut -c1-16)
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/lora-zh-workflow/llama-cpp-python-$VERSION-$cpu"
  rm -rf "$DEST/site"
  if [ -d "$cache/llama_cpp" ]; then
    cp -a "$cache" "$DEST/site"
  fi
  if ! built; then
    rm -rf "$DEST/site"
    # one build at a time on a shared machine; CMAKE_BUILD_PARALLEL_LEVEL uses every core
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) flock /tmp/cpu.lock .venv/bin/python -m pip install -q \
      --no-deps --target "$DEST/site" "$DEST/dist/$SDIST"
    .venv/bin/python -m pip install -q --no-deps --target "$DEST/site" diskcache==5.6.3
    mkdir -p "$(dirname "$cache")"
    rm -rf "$cache.tmp" && cp -a "$DEST/site" "$cache.tmp" && rm -rf "$cache" && mv "$cache.tmp" "$cache"
  fi
fi
