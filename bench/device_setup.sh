#!/usr/bin/env bash
# The install bench/device_check.py needs on a fresh GPU machine that has no internet: only the
# repository's files (and what a call carries) are there.
#
#   bash bench/device_setup.sh prepare        # HERE, where pip reaches a registry: fills .device/
#   bash bench/device_setup.sh install [OUT]  # THERE: venv + package from local files; OUT/setup.txt
#
# prepare downloads wheels for the GPU image's Python (3.12, x86-64) of the packages that image
# lacks (docs: /work/.library/device/KINDS.md), builds the sdist-only ones, and copies the lfw10
# photos the tests read from ../shared; everything lands in .device/ (git-ignored), which a device
# call carries (`carry: [".device"]`). ray (~70 MB) cannot travel within the 64 MiB a call carries:
# the e2e parts then run the process executor (local if it fails) and say so.
#
# install makes a venv with --system-site-packages where the image's python3 has torch with CUDA
# (so its torch, numpy, transformers, ... are used as they are), installs .device/wheels and this
# package with --no-deps --no-index, links ../shared to .device/shared when ../shared is absent,
# and lists what imports and what is missing. It never reaches a network.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$ROOT/.device"
VENV="${FACEWEAVE_DEVICE_VENV:-/tmp/faceweave-venv}"
WHEEL_DIR="${FACEWEAVE_DEVICE_WHEELS:-$DEV/wheels}"
SITE="${FACEWEAVE_DEVICE_SITE:-/tmp/faceweave-site}"  # the wheels' folder where no venv can be made
PY_VERSION="${FACEWEAVE_DEVICE_PY:-3.12}"
# Wheels the GPU image lacks (exact versions: those this repository is tested with). protobuf 4.25
# is mediapipe 0.10.21's own pin: with protobuf 5.29 its face mesh graph fails to parse (seen here
# on Python 3.12 + numpy 2.2; 4.25 and 6.31 worked), and the image's version is not known ahead.
WHEELS=(mediapipe==0.10.21 protobuf==4.25.9 diffusers==0.42.1 facexlib==0.3.0 webdataset==1.0.2
        braceexpand==0.1.7 lpips==0.1.4 dill==0.4.0)
SDISTS=(codeformer-pip==0.0.4)   # pure Python, published as sdist only: built into a wheel here

prepare() {
  local py="${PYTHON:-python3}"
  mkdir -p "$WHEEL_DIR" "$DEV/shared/faces"
  local plat=(--python-version "$PY_VERSION" --implementation cp --platform manylinux_2_28_x86_64
              --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for w in "${WHEELS[@]}"; do
    "$py" -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d "$WHEEL_DIR" "$w" \
      || echo "prepare: could not download $w" >&2
  done
  for s in "${SDISTS[@]}"; do
    "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEEL_DIR" "$s" \
      || echo "prepare: could not build $s" >&2
  done
  if [ -d "$ROOT/../shared/faces/lfw10" ]; then
    rm -rf "$DEV/shared/faces/lfw10"
    cp -r "$ROOT/../shared/faces/lfw10" "$DEV/shared/faces/lfw10"
    chmod -R u+w "$DEV/shared"
  fi
  local tracked
  tracked=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  local dev
  dev=$(du -sb "$DEV" | cut -f1)
  echo "prepare: .device holds $((dev / 1048576)) MiB; with the tracked files $(((dev + tracked) / 1048576)) MiB travel (limit 64)"
  ls -1 "$WHEEL_DIR"
}

install() {
  local out="${1:-}"
  [ -n "$out" ] && mkdir -p "$out"
  install_steps 2>&1 | if [ -n "$out" ]; then tee "$out/setup.txt"; else cat; fi
  echo "venv: $VENV (source $VENV/bin/activate)"
}

install_steps() {
    echo "device_setup: $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(nproc) cores"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
      || echo "nvidia-smi: none"
    local base="${PYTHON:-python3}"
    if "$base" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      echo "base python: $("$base" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__, "cuda", torch.version.cuda)')"
    else
      echo "base python: $base has no torch with CUDA; the check will run on what it has (CPU only?)"
    fi
    local py pip
    if [ -x "$VENV/bin/python" ] || "$base" -m venv --system-site-packages "$VENV"; then
      py="$VENV/bin/python"
      # The image's python3 is itself a venv (/opt/torch/.venv): --system-site-packages reaches the
      # interpreter's own site-packages, not that venv's, so its site folders go in through a .pth file.
      local site
      site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
      "$base" -c "import site; print('\n'.join(site.getsitepackages() + [site.getusersitepackages()]))" \
        > "$site/_faceweave_base_site.pth"
      pip=("$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check)
      echo "venv: $VENV over $base's packages"
    else  # no ensurepip there: the wheels go to a folder on PYTHONPATH (device_check.sh adds it)
      py="$base"
      rm -rf "$VENV"
      pip=("$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE")
      echo "venv: could not be made; wheels go to $SITE (on PYTHONPATH)"
    fi
    if compgen -G "$WHEEL_DIR/*.whl" >/dev/null; then
      "${pip[@]}" "$WHEEL_DIR"/*.whl && echo "wheels: installed $(ls "$WHEEL_DIR"/*.whl | wc -l) from $WHEEL_DIR" \
        || echo "MISSING: some of $WHEEL_DIR did not install (above)"
    else
      echo "wheels: none in $WHEEL_DIR (run 'bash bench/device_setup.sh prepare' here and carry .device)"
    fi
    # The package itself: editable, no build isolation (setuptools and wheel come from the image).
    if [ "$py" != "$base" ] && "${pip[@]}" --no-build-isolation -e "$ROOT" >/dev/null 2>&1; then
      echo "faceweave: installed (editable, --no-deps)"
    else
      echo "faceweave: not installable here; bench/ and the tests find it through PYTHONPATH=$ROOT"
    fi
    if [ ! -e "$ROOT/../shared" ] && [ -d "$DEV/shared" ]; then
      ln -s "$DEV/shared" "$ROOT/../shared" && echo "shared: ../shared -> .device/shared"
    fi
    [ -d "$ROOT/../shared/faces/lfw10" ] || echo "MISSING: ../shared/faces/lfw10 (tests that need it skip)"
    PYTHONPATH="$ROOT:$SITE" "$py" - <<'EOF'
import importlib
checks = {
    "torch (CUDA)": "import torch; assert torch.cuda.is_available(), 'no CUDA'; v = torch.__version__",
    "numpy": "import numpy; v = numpy.__version__",
    "mediapipe face mesh": "import numpy as np; from mediapipe.python.solutions import face_mesh; "
                           "face_mesh.FaceMesh(static_image_mode=True).process(np.zeros((64, 64, 3), np.uint8)); "
                           "import mediapipe; v = mediapipe.__version__",
    "facexlib": "from facexlib.detection.retinaface import RetinaFace; import facexlib; v = facexlib.__version__",
    "codeformer": "from codeformer.basicsr.archs.codeformer_arch import CodeFormer; v = 'ok'",
    "diffusers": "import diffusers; v = diffusers.__version__",
    "transformers": "import transformers; v = transformers.__version__",
    "lightning": "import lightning; v = lightning.__version__",
    "webdataset": "import webdataset; v = 'ok'",
    "pyarrow": "import pyarrow; v = pyarrow.__version__",
    "cv2": "import cv2; v = cv2.__version__",
    "h5py": "import h5py; v = h5py.__version__",
    "pytest": "import pytest; v = pytest.__version__",
    "ray (optional: else the process executor)": "import ray; v = ray.__version__",
    "duckdb (optional: pipeline sql only)": "import duckdb; v = duckdb.__version__",
    "faceweave": "import pipeline.core.runner, stages, training.sd; v = 'ok'",
}
for name, code in checks.items():
    scope = {}
    try:
        exec(code, scope)
        print(f"ok       {name} {scope.get('v', '')}")
    except BaseException as exc:  # report every failure, never stop
        print(f"MISSING  {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
EOF
}

case "${1:-}" in
  prepare) prepare ;;
  install) install "${2:-}" ;;
  *) echo "usage: bash bench/device_setup.sh prepare | install [OUT]" >&2; exit 2 ;;
esac
