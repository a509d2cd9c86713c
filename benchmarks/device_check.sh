#!/usr/bin/env bash
# Device check: install what is missing, run the tests marked `device` on DEVICE, then the benchmark report.
#
#   bash benchmarks/device_check.sh                     # CUDA (the default), full report; < 8 min on one GPU
#   bash benchmarks/device_check.sh --device cpu --quick  # the same path on a CPU, as CI would run it
#
# Options: --device cuda|cpu|mps (default cuda), --quick (report: vit_b only, one run each, small automatic
# stages; tests: without the full-size goldens), --wheels DIR (install missing packages from DIR only, for
# machines without network), --venv DIR (default /tmp/napari-sam-device-venv; an existing one is reused).
# Anything after `--` goes to benchmarks/report.py.
#
# The environment is a virtual environment that sees the system's packages (GPU images come with torch),
# so only what is missing is installed: torch, the reference (segment-anything, mobilesam-mirror + timm,
# torchvision), our dependencies from pyproject.toml, pytest. Our package is NOT installed: it runs from
# this checkout through PYTHONPATH=src, so no editable install anywhere is re-pointed.
# The report is written to $OUT/device_report.md when OUT is set, else to device_report.md in the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

DEVICE=cuda
QUICK=0
WHEELS=""
VENV="${DEVICE_CHECK_VENV:-/tmp/napari-sam-device-venv}"
REPORT_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --) shift; REPORT_ARGS=("$@"); break ;;
    *) echo "device_check.sh: unknown option $1 (see the comment at the top of this script)" >&2; exit 2 ;;
  esac
done
START=$(date +%s)
stamp() { echo "[device_check $(( $(date +%s) - START )) s] $*"; }

# ---------------------------------------------------------------- environment
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  stamp "creating $VENV (sees the system's packages)"
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
if [ -n "$WHEELS" ]; then PIP+=(--no-index --find-links "$WHEELS"); fi

# our base dependencies come from pyproject.toml (one source)
mapfile -t OUR_DEPS < <("$PY" - "$REPO/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
for req in re.findall(r'"([^"]+)"', block):
    if not req.startswith("torch"):
        print(req)
EOF
)
# requirements whose import fails, checked in one interpreter (one start-up, not one per package)
missing_of() {
  "$PY" - "$@" <<'EOF'
import importlib, re, sys
special = {"scikit-image": "skimage", "pillow": "PIL", "mobilesam-mirror": "mobile_sam"}
for req in sys.argv[1:]:
    name = re.split(r"[<>=!~;\[]", req)[0].strip()
    try:
        importlib.import_module(special.get(name.lower(), name.replace("-", "_")))
    except Exception:  # missing, or broken beside this torch (torchvision)
        print(req)
EOF
}
mapfile -t missing < <(missing_of torch "${OUR_DEPS[@]}" pytest)
if [ ${#missing[@]} -gt 0 ]; then
  stamp "installing: ${missing[*]}"
  "${PIP[@]}" "${missing[@]}"
fi
# the reference is optional: without it the report shows ours alone (and says why)
mapfile -t ref_missing < <(missing_of torchvision segment-anything mobilesam-mirror timm)
if [ ${#ref_missing[@]} -gt 0 ]; then
  stamp "installing the reference: ${ref_missing[*]}"
  "${PIP[@]}" "${ref_missing[@]}" || stamp "WARNING: the reference could not be installed; the report shows ours alone"
fi

export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" NAPARI_SAM_TEST_DEVICE="$DEVICE" PYTHONUNBUFFERED=1
"$PY" - "$DEVICE" <<'EOF'
import sys, torch, napari_sam
from napari_sam.engine.predict.device import select_device
device = select_device(sys.argv[1])  # fails here, clearly, when the device is missing
name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
print(f"torch {torch.__version__} on {name}; napari_sam from {napari_sam.__file__}")
EOF

# ---------------------------------------------------------------- tests marked `device`
MARK="device"
if [ "$QUICK" = 1 ]; then MARK="device and not slow"; fi
stamp "tests -m '$MARK' on $DEVICE"
# only the files that use the marker: the GUI tests need napari and a display, which a GPU box lacks
mapfile -t DEVICE_TESTS < <(grep -rl --include='test_*.py' "mark.device" tests | sort)
"$PY" -m pytest -q -p no:cacheprovider -m "$MARK" "${DEVICE_TESTS[@]}"

# ---------------------------------------------------------------- report
OUTPUT="${OUT:-$VENV}/device_report.md"
ARGS=(--device "$DEVICE")
if [ "$QUICK" = 1 ]; then ARGS+=(--quick --models vit_b); fi
stamp "report: benchmarks/report.py ${ARGS[*]} ${REPORT_ARGS[*]:-}"
"$PY" benchmarks/report.py "${ARGS[@]}" "${REPORT_ARGS[@]}" | tee "$OUTPUT"
stamp "done; report in $OUTPUT"
