#!/bin/sh
# FlashAttention 2 in the Transformers GPU image (attn_implementation="flash_attention_2": the seed's FA2 rows),
# run by the builder stage after the pinned requirements (image.yaml: post_install).
#
# flash-attn is a source package on PyPI; its setup.py needs nvcc (CUDA_HOME) before it even looks for its
# prebuilt wheel, and compiles for hours where none matches. This installs the prebuilt wheel directly: the
# one flash-attn's GitHub release names for this torch, CUDA major, Python and C++ ABI (the name its
# setup.py guesses), or the wheel FLASH_ATTN_WHEEL names (a URL, or a file given with --wheels). Where
# there is none, the build fails here, saying what to pass: it never drops flash-attn silently. flash-attn's
# wheel also carries an old flash_attn/cute, flash-attn-4's package: flash-attn-4 is put back and checked.
# FLASH_ATTN=none builds without it; the FA2 rows then say so. What happened is written to
# <venv>/inference-matrix-flash-attn.txt, which entrypoints/run_transformers.py reads.
#
#   FLASH_ATTN        the flash-attn release (image.yaml's default), or none
#   FLASH_ATTN_WHEEL  optional: the wheel to install instead of the release's own
#   VENV, WHEELS      the venv (/opt/venv) and the local wheels (/build-context/wheels)
set -eu
venv=${VENV:-/opt/venv}
marker=$venv/inference-matrix-flash-attn.txt
version=${FLASH_ATTN:-none}
wheels=${WHEELS:-/build-context/wheels}

if [ "$version" = none ]; then
  echo "none: the image was built with --build-arg FLASH_ATTN=none" > "$marker"
  echo "flash-attn: not installed (FLASH_ATTN=none)"
  exit 0
fi

fail() {
  echo "images/transformers: flash-attn $version: $1. Build with --build-arg FLASH_ATTN_WHEEL=<a flash-attn" \
    "$version wheel built for this torch, CUDA and Python> (a URL, or a file given with --wheels), or with" \
    "--build-arg FLASH_ATTN=none to build without FlashAttention 2 (its rows then say so); README: FlashAttention 2" >&2
  exit 1
}

version_of() {
  "$venv/bin/python3" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true
}

wheel=${FLASH_ATTN_WHEEL:-}
if [ -z "$wheel" ]; then
  # flash-attn's setup.py (get_wheel_url): its release's wheel for torch major.minor, CUDA major, CPython, ABI
  wheel=$("$venv/bin/python3" - "$version" <<'EOF'
import platform, sys, torch
version = sys.argv[1]
if not torch.version.cuda:
    sys.exit(f"torch {torch.__version__} is not a CUDA build")
major, minor = torch.__version__.split("+")[0].split(".")[:2]
cuda = torch.version.cuda.split(".")[0]
abi = str(torch._C._GLIBCXX_USE_CXX11_ABI).upper()
python = f"cp{sys.version_info.major}{sys.version_info.minor}"
name = f"flash_attn-{version}+cu{cuda}torch{major}.{minor}cxx11abi{abi}-{python}-{python}-linux_{platform.machine()}.whl"
print(f"https://github.com/Dao-AILab/flash-attention/releases/download/v{version}/{name}")
EOF
  ) || fail "no prebuilt wheel to look for (see the line above)"
fi
case "$wheel" in
  http://* | https://* | /*) ;;
  *) wheel=$wheels/$wheel ;;
esac
fa4=$(version_of flash-attn-4)

echo "flash-attn $version: installing $wheel"
"$venv/bin/pip" install --no-cache-dir --no-deps "$wheel" || fail "could not install $wheel"
installed=$(version_of flash-attn)
[ "${installed%%+*}" = "$version" ] || fail "$wheel installed flash-attn ${installed:-nothing}, not $version"

if [ -n "$fa4" ]; then
  # flash-attn's wheel carries an old copy of flash_attn/cute, flash-attn-4's package: put flash-attn-4's back
  "$venv/bin/pip" install --no-cache-dir --no-deps --force-reinstall --find-links "$wheels" \
    ${INDEX_URL:+--index-url "$INDEX_URL"} ${EXTRA_INDEX_URL:+--extra-index-url "$EXTRA_INDEX_URL"} \
    "flash-attn-4==$fa4" || fail "could not reinstall flash-attn-4 $fa4 over the flash_attn/cute that flash-attn brought"
  # every file flash-attn-4 installed is as its wheel made it
  "$venv/bin/python3" - <<'EOF' || fail "flash-attn-4's files changed under it (see the line above)"
import base64, hashlib, importlib.metadata as m, sys

def digest(f):
    return base64.urlsafe_b64encode(hashlib.new(f.hash.mode, f.read_binary()).digest()).rstrip(b"=").decode()

changed = [str(f) for f in m.distribution("flash-attn-4").files or [] if f.hash and digest(f) != f.hash.value]
sys.exit(f"{len(changed)} of flash-attn-4's files differ from its RECORD, e.g. {changed[:3]}" if changed else 0)
EOF
fi
echo "$installed from $wheel" > "$marker"
echo "flash-attn: $installed${fa4:+ (flash-attn-4 $fa4 kept)}"
