#!/usr/bin/env bash
# Regenerates every CPU table indexed in benchmarks/README.md, one script after the other (never two at once: the timing
# tables need the cores to themselves), each script's output in its own file under $OUT (default
# outputs/benchmarks). About 1 h 30 on 2 cores, most of it the full comparison; `--quick` runs the comparison's
# reduced preset instead (about 45 min in all).
#
#   bash benchmarks/run_all.sh [--quick]
#
# The GPU tables come from benchmarks/gpu.sh, on a machine with a CUDA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/benchmarks}
PRESET=full
if [[ "${1:-}" == "--quick" ]]; then PRESET=reduced; fi
mkdir -p "$OUT"

run() {
  local name=$1
  shift
  echo "== $name: python $* ($(date -u +%H:%M:%S) UTC)"
  python "$@" >"$OUT/$name.md" 2>"$OUT/$name.log"
}

run end_to_end benchmarks/end_to_end.py --variants ours ours-foreach open_clip --json "$OUT/end_to_end.json"
run throughput benchmarks/throughput.py --steps 4 --json "$OUT/throughput.json"
run inference benchmarks/inference.py
run data_pipeline benchmarks/data_pipeline.py
run large_batch benchmarks/large_batch.py
run fsdp_memory benchmarks/fsdp_memory.py
run loss_scaling benchmarks/loss_scaling.py --rounds 2
run comparison benchmarks/comparison.py --preset "$PRESET" --output "$OUT/comparison-$PRESET.json"
run finetune_from_clip benchmarks/finetune_from_clip.py --output "$OUT/finetune_from_clip"
echo "tables in $OUT/*.md"
