#!/usr/bin/env bash
# The GPU benchmark in one call (written for one H100/H200-class GPU; not yet run on one): ViT-B/32 training
# samples/s and MFU in bf16 (eager and torch.compile) of UniCL, UniCLIP and MS-CLIP-S against CLIPModel and
# open_clip, the data pipeline's images/s per core and the workers one GPU needs. See benchmarks/gpu.py.
#
#   bash benchmarks/gpu.sh                     # default sections; results in $OUT (else benchmarks/results)
#   SECTIONS="throughput data" bash benchmarks/gpu.sh
#   bash benchmarks/gpu.sh --smoke             # the same code paths on the CPU at tiny sizes
#
# Each section runs in its own process under `timeout` (SECTION_TIMEOUT seconds), so a slow or failing section
# leaves the others' results; the summary is written from whatever sections finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-python}"
SECTIONS="${SECTIONS:-throughput compile data}"
SECTION_TIMEOUT="${SECTION_TIMEOUT:-480}"
mkdir -p "$OUT"
{ nvidia-smi || echo "no nvidia-smi"; } > "$OUT/nvidia-smi.txt" 2>&1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'devices', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])" | tee "$OUT/torch.txt"
status=0
for section in $SECTIONS; do
    echo "== $section (at most ${SECTION_TIMEOUT}s) =="
    timeout "$SECTION_TIMEOUT" "$PYTHON" benchmarks/gpu.py --sections "$section" --out "$OUT" "$@" \
        > "$OUT/$section.log" 2>&1
    code=$?
    tail -n 40 "$OUT/$section.log"
    if [ "$code" -ne 0 ]; then
        echo "section $section ended with status $code (124: timed out); its log: $OUT/$section.log"
        status=1
    fi
done
"$PYTHON" benchmarks/gpu.py --report --out "$OUT" "$@"
exit "$status"
