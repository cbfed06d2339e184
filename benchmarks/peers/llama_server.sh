#!/usr/bin/env bash
# llama.cpp's own llama-server, the peer for the serving benchmark.
#
# `build` compiles it from the llama.cpp sources vendored in the PyPI sdist of
# llama-cpp-python (pinned below), with cmake, for this CPU. `serve GGUF PORT SLOTS`
# runs it with SLOTS continuous-batching slots on 2 threads. (llama-cpp-python's
# own Python server handles one request at a time, so it is not the peer.)
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${LLAMA_PEER_DIR:-$HERE/.llama.cpp}"   # git-ignored
BINARY="$WORK/build/bin/llama-server"

build() {
    if [[ -x "$BINARY" ]]; then echo "$BINARY"; return; fi
    mkdir -p "$WORK"
    python -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
    tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
    local sources="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
    # no AMX: some VMs report AMX in cpuid without enabling its tile registers, and
    # ggml's AMX kernels then die with SIGILL (seen on this project's machines)
    local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake -S "$sources" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
    cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >&2
    echo "$BINARY"
}

serve() {
    local gguf="$1" port="$2" slots="${3:-32}"
    # each slot gets 512 tokens of context: a 256-token prompt, its template and 128 new tokens fit
    exec "$BINARY" -m "$gguf" --host 127.0.0.1 --port "$port" -t 2 --parallel "$slots" \
        -c $((slots * 512)) --cont-batching --no-webui
}

case "${1:-}" in
    build) build ;;
    serve) shift; serve "$@" ;;
    *) echo "usage: $0 build | serve GGUF PORT [SLOTS]" >&2; exit 2 ;;
esac
