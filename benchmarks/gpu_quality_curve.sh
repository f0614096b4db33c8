#!/usr/bin/env bash
# Quality per GPU-minute (issue 18, "if a GPU is lent"): one run of a larger preset trained on a GPU for MINUTES,
# checkpoints sampled there (SDE-DPM-Solver++ 30 steps, the CPU recipe's sampler), FID scored back on the CPU VM
# (the FID Inception weights do not travel to the GPU machine). Run on the GPU machine from the repo root:
#
#   SYNTHMED_SHARED=DIR bash benchmarks/gpu_quality_curve.sh OUT MINUTES   # DIR/data/bloodmnist.npz
#
# A probe first times 200 steps (the resumes it includes make it pessimistic: the schedule ends a little before
# MINUTES); a checkpoint per minute; marks 1, 2, 4 and MINUTES sampled against the labels of 1,000 real test images
# (seeds 0..999); the last checkpoint also against val (guidance 1.0 and 1.5) and, to be scored only for the guidance
# val picks, test at guidance 1.5 and seed sets 5000, 10000 at 1.0. Writes OUT/run.tar (points.json + the curve's
# samples) and OUT/final.tar (the last checkpoint's other samples). Back on the VM: untar both into a WORK and run
# the bench with the arguments the log prints and --phase score (val first). Environment: DEVICE (cuda), PRESET (M),
# BATCH (256), LR (0.002), THREADS (8), N (1000), WORK (/tmp/gpu_quality, must hold no other run); a dry run on a
# CPU: DEVICE=cpu PRESET=XS BATCH=8 N=20 PROBE_EVERY=20 THREADS=1 PYTHON=.venv/bin/python ... OUT 0.5.
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
one_run() {  # the one run folder under $1 (a WORK left from another run would mix them up)
  local found=("$1"/*/points.json)
  [ ${#found[@]} -eq 1 ] && [ -f "${found[0]}" ] || { echo "expected one run under $1: ${found[*]}" >&2; exit 2; }
  dirname "${found[0]}"
}
probe_dir=$(one_run "$work/probe")
read -r steps every < <("$py" - "$probe_dir/points.json" "$minutes" "$probe_every" <<'EOF'
import json, sys
from pathlib import Path
pts = json.loads(Path(sys.argv[1]).read_text())
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
d=$(one_run "$work/run")
b=$(basename "$d")
(cd "$work/run" && tar cf "$out/run.tar" "$b/points.json" "$b"/samples/fid_*_g1.0_k30_dpmpp_sde_step*.npy)
last=$("$py" -c "import json,sys; print(max(int(k) for k in json.load(open(sys.argv[1]))))" "$d/points.json")
pids=()
for extra in "--guidance 1.0 --ref val" "--guidance 1.5 --ref val" "--guidance 1.5 --ref test" \
             "--guidance 1.0 --ref test --first-seed 5000" "--guidance 1.0 --ref test --first-seed 10000"; do
  # shellcheck disable=SC2086
  "$py" "$bench" "${run[@]}" "${sde[@]}" $extra --at-step "$last" --phase sample --work "$work/run" &
  pids+=($!)
done
failed=0
rm -f "$d"/samples/*.tmp.npy  # a sampler killed while saving leaves only its temp file
for p in "${pids[@]}"; do wait "$p" || failed=1; done  # every sampler finishes before the verdict
(cd "$work/run" && tar cf "$out/final.tar" "$b"/samples/*_seed*_step*.npy "$b"/samples/*_val_*_step*.npy \
  "$b"/samples/fid_*_g1.5_k30_dpmpp_sde_step*.npy)
echo "done: run $b, last checkpoint $last; score with: $bench ${run[*]} --phase score ... (val first: the test"
echo "sets at guidance 1.5 are scored only if val picks 1.5)"
exit $failed
