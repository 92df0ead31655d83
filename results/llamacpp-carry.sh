#!/usr/bin/env bash
# Getting llama.cpp onto the lent GPU machine (no internet, 64 MiB per call, files back in 16 MiB
# pieces), as done for results/h200/llamacpp/. Run here, in the repository root:
#
#   bash results/llamacpp-carry.sh source          # .carry/llama-cpp-python: the pinned sdist, trimmed,
#                                                  # and .carry/llama-src: the same as one tarball (carry this)
#     results/device-run.sh builds it once per machine when a call carries .carry/llama-src (about
#     5 min; the binding from the same sdist); or by hand, to bring the build back for later machines:
#     then, on the device, carry [".carry"]:
#     BUILD_DIR=/tmp/b bash images/llamacpp/build-llama-cpp.sh .carry/llama-cpp-python /tmp/lcpp \
#       -G Ninja -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90
#     cd /tmp && tar -cf - lcpp/bin lcpp/BUILD_INFO | xz -T16 -6 > lcpp.tar.xz && split -b 15M -d lcpp.tar.xz $OUT/lcpp.tar.xz.part-
#   bash results/llamacpp-carry.sh runtime DIR     # DIR holds the pieces that came back:
#                                                  # .carry/llamacpp-cuda = build + binding + converter
#     then results/device-run.sh unpacks it (carry [".carry/llamacpp-cuda", ".whl"]).
#
# The trimmed sdist drops what the build does not read (git pack, test vocabularies, docs,
# examples, tests, the web UI's Svelte sources, which only an npm build reads): 77 MB -> about 48 MB.
# It keeps tools/server and tools/ui's CMake part, which llama-server, the serving cells' server,
# builds from (with no UI assets, as from the sdist).
set -euo pipefail
version=0.3.36
sdist=/tmp/llama-cpp-python-sdist
fetch() {
  [ -d "$sdist/llama_cpp_python-$version" ] && return
  mkdir -p "$sdist"
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$sdist"
  tar -xzf "$sdist/llama_cpp_python-$version.tar.gz" -C "$sdist"
}
case "${1:-}" in
  source)
    fetch
    rm -rf .carry/llama-cpp-python && mkdir -p .carry
    cp -r "$sdist/llama_cpp_python-$version" .carry/llama-cpp-python
    (cd .carry/llama-cpp-python && rm -rf .git .github docs examples tests docker \
      vendor/llama.cpp/{models,docs,tests,benches,examples,.git,.github,app,ci,.devops,media} \
      vendor/llama.cpp/tools/ui/{src,tests,package-lock.json})
    # and the same as one xz tarball (about 8 MB): the form to carry, as a call carries the working tree too
    # (21 MB in December 2026) within its 64 MiB; device-run.sh unpacks it into .carry/llama-cpp-python
    rm -rf .carry/llama-src && mkdir -p .carry/llama-src
    tar -C .carry -cf - llama-cpp-python | xz -T0 -6 > .carry/llama-src/llama-cpp-python.tar.xz
    du -sh .carry/llama-cpp-python .carry/llama-src ;;
  runtime)
    fetch
    pieces=${2:?usage: llamacpp-carry.sh runtime DIR_WITH_lcpp.tar.xz.part-NN}
    rm -rf .carry/llamacpp-cuda && mkdir -p .carry/llamacpp-cuda/python
    cat "$pieces"/lcpp.tar.xz.part-* > .carry/llamacpp-cuda/lcpp.tar.xz
    src="$sdist/llama_cpp_python-$version"
    cp -r "$src/llama_cpp" .carry/llamacpp-cuda/python/
    cp -r "$src/vendor/llama.cpp/convert_hf_to_gguf.py" "$src/vendor/llama.cpp/conversion" \
      "$src/vendor/llama.cpp/gguf-py" .carry/llamacpp-cuda/
    du -sh .carry/llamacpp-cuda ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
