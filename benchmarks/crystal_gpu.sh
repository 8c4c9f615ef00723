#!/usr/bin/env bash
# Train the crystal models on one CUDA GPU, all at once (they are too small to fill it alone),
# and draw the CSP samples there; score the samples afterwards on any machine with pymatgen:
#
#   DATA=/path/to/data OUT=/path/to/out BUDGET=380 bash benchmarks/crystal_gpu.sh
#   python benchmarks/crystal_csp.py --model OUT/perov5_a.pt --samples OUT/perov5_a_samples.pt \
#       --sample-steps 50 --anneal-slopes 0 2 --k20-limit 100000 --json RESULT.json
#
# DATA holds crystal/perov_5/*.csv and crystal/carbon_24/*.csv (../shared/data's layout). The
# GPU machine needs torch, tqdm and numpy but not pymatgen when XDG_CACHE_HOME holds the
# loader's cache of those CSV files (flowmatch/crystal/*.pt, written by any earlier load).
# A smoke pass (a few steps of every job) runs first and stops the script if any job fails.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(cd "${DATA:?set DATA}" && pwd)
mkdir -p "${OUT:?set OUT}"
OUT=$(cd "$OUT" && pwd)
BUDGET=${BUDGET:-380}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
logs=$(mktemp -d)
cd "$here/benchmarks"

csp() {  # csp NAME DATASET HIDDEN LAYERS BATCH EXTRA...
    local name=$1 dataset=$2 hidden=$3 layers=$4 batch=$5
    shift 5
    python3 crystal_csp.py --dataset "$dataset" --data-dir "$DATA" --device "$DEVICE" \
        --hidden "$hidden" --layers "$layers" --batch "$batch" --steps 1000000 \
        --sample-steps 50 --anneal-slopes 0 2 --sample-batch 16384 "$@"
}

dng() {  # dng DATASET HIDDEN LAYERS BUDGET OUTFILE CSV...
    local dataset=$1 hidden=$2 layers=$3 budget=$4 out=$5
    shift 5
    local files=()
    for f in "$@"; do files+=("$DATA/crystal/$dataset/$f"); done
    python3 -m flowmatch crystal train --de-novo --device "$DEVICE" --budget "$budget" \
        --steps 1000000 --batch 512 --hidden "$hidden" --layers "$layers" --quiet --force \
        --data "${files[@]}" --out "$out"
}

jobs_smoke() {
    local s=$logs/smoke
    mkdir -p "$s"
    csp perov_a perov_5 256 6 512 --train-budget 4 --limit 40 --select-on 20 --k20-limit 5 \
        --save-model "$s/a.pt" --export-samples "$s/a_s.pt" >"$s/perov_a.log" 2>&1 &
    csp carbon carbon_24 256 6 256 --train-budget 4 --limit 40 --select-on 20 --k20-limit 5 \
        --save-model "$s/c.pt" --export-samples "$s/c_s.pt" >"$s/carbon.log" 2>&1 &
    dng perov_5 256 6 4 "$s/d.pt" val.csv >"$s/dng.log" 2>&1 &
    local failed=0
    for pid in $(jobs -p); do wait "$pid" || failed=1; done
    for f in "$s"/*.log; do echo "== smoke: $f"; tail -4 "$f"; done
    return $failed
}

if ! jobs_smoke; then
    echo "smoke pass failed; nothing trained"
    exit 1
fi
[ -n "${SMOKE_ONLY:-}" ] && exit 0

csp perov_a perov_5 256 6 512 --train-budget "$BUDGET" --k20-limit 100000 \
    --save-model "$OUT/perov5_a.pt" --export-samples "$OUT/perov5_a_samples.pt" \
    >"$logs/perov5_a.log" 2>&1 &
csp perov_b perov_5 192 4 512 --train-budget "$BUDGET" --k20-limit 0 \
    --save-model "$OUT/perov5_b.pt" --export-samples "$OUT/perov5_b_samples.pt" \
    >"$logs/perov5_b.log" 2>&1 &
csp carbon carbon_24 256 6 256 --train-budget "$BUDGET" --k20-limit 1000 \
    --save-model "$OUT/carbon24.pt" --export-samples "$OUT/carbon24_samples.pt" \
    >"$logs/carbon24.log" 2>&1 &
dng perov_5 256 6 "$BUDGET" "$OUT/perov5_dng.pt" val.csv train_dev_1024.csv \
    >"$logs/perov5_dng.log" 2>&1 &
dng carbon_24 192 4 "$BUDGET" "$OUT/carbon24_dng.pt" val.csv >"$logs/carbon24_dng.log" 2>&1 &
failed=0
for pid in $(jobs -p); do wait "$pid" || failed=1; done
for f in "$logs"/*.log; do echo "== $f"; tail -6 "$f"; done
exit $failed
