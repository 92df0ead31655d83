#!/usr/bin/env bash
# Build llama.cpp once from the llama.cpp source that a llama-cpp-python sdist vendors, and lay out
# everything the llama.cpp cells use from that one build, so binding, quantiser, converter,
# llama-bench and the server of serving cells are the same llama.cpp:
#   PREFIX/bin/      libllama.so, libggml*.so, llama-bench, llama-quantize, llama-server (RPATH $ORIGIN);
#                    the Python binding loads it through LLAMA_CPP_LIB_PATH=PREFIX/bin
#   PREFIX/convert_hf_to_gguf.py, PREFIX/conversion/, PREFIX/gguf-py/   llama.cpp's own converter
#   PREFIX/BUILD_INFO   the llama-cpp-python version, the llama.cpp commit and the cmake arguments
# Used by images/llamacpp (both flavours) and on GPU hosts without Docker (results/README.md).
# usage: build-llama-cpp.sh SDIST_DIR PREFIX [cmake arguments, e.g. -DGGML_CUDA=on]
set -euo pipefail
sdist=$(cd "$1" && pwd); prefix=$2; shift 2
source_dir="$sdist/vendor/llama.cpp"
build_dir=${BUILD_DIR:-$(mktemp -d)}
jobs=${JOBS:-$(nproc)}
test -f "$source_dir/CMakeLists.txt" || { echo "build-llama-cpp.sh: $source_dir has no CMakeLists.txt" >&2; exit 2; }

cmake -S "$source_dir" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  '-DCMAKE_BUILD_RPATH=$ORIGIN' "$@"
cmake --build "$build_dir" --target llama-bench llama-quantize llama-server -j "$jobs"

mkdir -p "$prefix/bin"
cp -P "$build_dir"/bin/lib*.so* "$build_dir/bin/llama-bench" "$build_dir/bin/llama-quantize" "$build_dir/bin/llama-server" "$prefix/bin/"
cp -r "$source_dir/convert_hf_to_gguf.py" "$source_dir/conversion" "$source_dir/gguf-py" "$prefix/"
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$sdist/llama_cpp/__init__.py")
commit=$(sed -n 's/.*update llama.cpp to ggml-org\/llama.cpp@\([0-9a-f]*\).*/\1/p' "$sdist/CHANGELOG.md" | head -1)
{
  echo "llama_cpp_python=$version"
  echo "llama_cpp_commit=${commit:-unknown}"
  echo "cmake_args=$*"
} > "$prefix/BUILD_INFO"
cat "$prefix/BUILD_INFO"
