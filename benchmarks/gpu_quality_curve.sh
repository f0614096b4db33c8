#!/usr/bin/env bash
# Quality per GPU-minute (issue 18, "if a GPU is lent"): one run of a larger preset trained on a GPU for MINUTES,
# checkpoints sampled there (SDE-DPM-Solver++ 30 steps, the CPU recipe's sampler), FID scored back on the CPU VM
# (the FID Inception weights do not travel to the GPU machine). Run on the GPU machine from the repo root:
#
#   SYNTHMED_SHARED=DIR bash benchmarks/gpu_quality_curve.sh OUT MINUTES   # DIR/data/bloodmnist.npz
#
# A probe first times 200 steps, so the cosine schedule is sized to end at MINUTES of training; a checkpoint per
# minute; marks 1, 2, 4 and MINUTES sampled against the labels of 1,000 real test images (seeds 0..999); the last
# checkpoint also against val (guidance 1.0 and 1.5, to choose on val) and test at guidance 1.5 and seed sets 5000,
# 10000. Writes OUT/run.tar (points.json + curve samples) and OUT/final.tar (the last checkpoint's extra samples).
# Back on the VM: untar both into the WORK named in the log and run the same bench with --phase score.
# Environment: DEVICE (cuda), PRESET (M), BATCH (256), LR (0.002), THREADS (8), N (1000), WORK (/tmp/gpu_quality); a dry
# run on a CPU: DEVICE=cpu PRESET=XS BATCH=8 N=50 PROBE_EVERY=20 ... OUT 1.
set -euo pipefail
out=${1:?usage: gpu_quality_curve.sh OUT MINUTES}
minutes=${2:-7}
py=${PYTHON:-python3}
work=${WORK:-/tmp/gpu_quality}
bench=benchmarks/bench_quality_per_minute.py
common=(--kinds ddpm --preset "${PRESET:-M}" --batch "${BATCH:-256}" --lr "${LR:-0.002}" --set optimizer=muon
        --set mixed_precision=bf16 --device "${DEVICE:-cuda}" --threads "${THREADS:-8}" --n "${N:-1000}")
mkdir -p "$out"

# 1. probe: seconds per step (steps 100..300, two resumes included, as in the run) on a throwaway schedule
probe_every=${PROBE_EVERY:-100}
"$py" "$bench" "${common[@]}" --train-steps 100000 --every "$probe_every" --at-step $((3 * probe_every)) \
  --phase train --work "$work/probe"
read -r steps every < <("$py" - "$work/probe" "$minutes" "$probe_every" <<'EOF'
import json, sys
from pathlib import Path
pts = json.loads(next(Path(sys.argv[1]).glob("*/points.json")).read_text())
minutes, e = float(sys.argv[2]), int(sys.argv[3])
per_step = (pts[str(3 * e)]["minutes"] - pts[str(e)]["minutes"]) / (2 * e)
every = max(10, int(1.0 / per_step))  # one checkpoint per minute
print(max(10, int(every * minutes)), every)
EOF
)
echo "probe: schedule of $steps steps, a checkpoint every $every"

# 2. train until MINUTES (the schedule ends there), one process
run=("${common[@]}" --train-steps "$steps" --every "$every" --marks "1,2,4,$minutes")
"$py" "$bench" "${run[@]}" --phase train --work "$work/run"

# 3. sample: the curve, then the last checkpoint's extra sets, side by side
sde=(--sampler dpmpp_sde --sampler-steps 30)
"$py" "$bench" "${run[@]}" "${sde[@]}" --guidance 1.0 --ref test --phase sample --work "$work/run"
d=$(dirname "$(ls "$work"/run/*/points.json)")
tar cf "$out/run.tar" -C "$work/run" --exclude=checkpoints --exclude='*seed*' --exclude='*_val*' \
  --exclude='*g1.5*' "$(basename "$d")"
last=$("$py" -c "import json,sys,pathlib; print(max(int(k) for k in json.loads(next(pathlib.Path(sys.argv[1]).glob('*/points.json')).read_text())))" "$work/run")
pids=()
for extra in "--guidance 1.0 --ref val" "--guidance 1.5 --ref val" "--guidance 1.5 --ref test" \
             "--guidance 1.0 --ref test --first-seed 5000" "--guidance 1.0 --ref test --first-seed 10000"; do
  # shellcheck disable=SC2086
  "$py" "$bench" "${run[@]}" "${sde[@]}" $extra --at-step "$last" --phase sample --work "$work/run" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
(cd "$work/run" && b=$(basename "$d") && tar cf "$out/final.tar" "$b"/samples/*seed* "$b"/samples/*_val* \
  "$b"/samples/*g1.5_k30_dpmpp*)
echo "done: run $(basename "$d"), last checkpoint $last; score with: $bench ${run[*]} --phase score ..."
