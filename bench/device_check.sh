#!/usr/bin/env bash
# Every GPU figure from one command on a fresh GPU machine (see README, "Measuring on a GPU"):
#
#   bash bench/device_check.sh OUT [device_check.py options]      # e.g. --parts e2e_250,naive
#
# installs from local files (bench/device_setup.sh install: venv, .device/wheels, the package),
# then runs bench/device_check.py OUT. OUT ends with report.json, report.md, log.txt,
# gpu_tests.txt, setup.txt. Exits 0 whenever a report was written.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:?usage: bash bench/device_check.sh OUT [options]}"
shift
VENV="${FACEWEAVE_DEVICE_VENV:-/tmp/faceweave-venv}"
SITE="${FACEWEAVE_DEVICE_SITE:-/tmp/faceweave-site}"
bash "$ROOT/bench/device_setup.sh" install "$OUT"
PY="$VENV/bin/python"
[ -x "$PY" ] || PY="${PYTHON:-python3}"
cd "$ROOT" && PYTHONPATH="$ROOT:$SITE" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  "$PY" bench/device_check.py "$OUT" "$@"
rc=$?
[ -f "$OUT/report.json" ] && exit 0
exit "$rc"
