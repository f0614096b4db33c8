"""Load benchmark: generating 10,000 images at 28 px runs in constant memory (streamed, atomic PNG writes).

    python benchmarks/bench_generate_load.py --n 10000 --out /tmp/bench-load [--device cpu]

1. trains a tiny XS DDPM for a few steps on ``phantom:blood`` at 28 px (quality irrelevant);
2. runs ``synthmed generate`` in-process (DPM++ with few steps, no guidance) for ``--n`` images, while a sampler
   thread records the resident set size (VmRSS) every 0.2 s and at fixed image counts (a counter wraps
   ``writer.atomic_save_png`` from the outside: stage code is not changed);
3. prints and writes ``result.json``: images/s, peak RSS (VmHWM), RSS after 1,000 images and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images in total (split evenly over 4 classes)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/synthmed-bench-load"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2, help="DPM++ sampling steps")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--marks", default="1000,2000,5000,10000", help="image counts at which RSS is recorded")
    args = ap.parse_args()

    os.environ.setdefault("TQDM_DISABLE", "1")
    from synthmed.cli import main as cli
    import synthmed.synthetic.writer as plan

    per_class = -(-args.n // 4)
    sets = ["device=" + args.device, "data.size=28", "data.phantom={n_classes: 4, n_per_class: 20, size: 28}",
            f"generator.ddpm={{preset: XS, steps: {args.train_steps}, batch_size: 8, checkpoint_every: 1000, "
            f"warmup_steps: 1, mixed_precision: 'no'}}",
            f"generation={{n_per_class: {per_class}, sampler: dpmpp, steps: {args.steps}, guidance: 1.0, "
            f"batch_size: {args.batch_size}}}"]
    argv = [str(SMOKE), "-o", str(args.out)] + [x for s in sets for x in ("--set", s)]
    t0 = time.perf_counter()
    assert cli(["finetune", *argv]) == 0
    t_train = time.perf_counter() - t0

    marks = sorted(int(m) for m in args.marks.split(",") if int(m) <= args.n)
    count = {"n": 0}
    at_mark: dict[int, int] = {}
    real_save = plan.atomic_save_png

    def counting_save(path, image):
        real_save(path, image)
        count["n"] += 1
        if count["n"] in marks:
            at_mark[count["n"]] = rss_kib()

    plan.atomic_save_png = counting_save
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), count["n"], rss_kib()))
            stop.wait(0.2)

    rss_before = rss_kib()
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t1 = time.perf_counter()
    code = cli(["generate", *argv])
    wall = time.perf_counter() - t1
    stop.set()
    th.join()
    assert code == 0
    n_png = sum(1 for _ in (args.out / "synthetic").rglob("*.png"))
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg(),
                    "device": args.device},
        "n_images": n_png, "train_seconds": round(t_train, 1), "generate_seconds": round(wall, 1),
        "images_per_second": round(n_png / wall, 2),
        "rss_mib_before_generate": round(rss_before / 1024, 1),
        "rss_mib_at": {str(k): round(v / 1024, 1) for k, v in sorted(at_mark.items())},
        "rss_mib_max_sampled_during_generate": round(max(s[2] for s in samples) / 1024, 1) if samples else None,
        "peak_rss_mib_process": round(rss_kib("VmHWM") / 1024, 1),
        "sampler": f"dpmpp, {args.steps} steps, guidance 1.0, batch {args.batch_size}",
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
