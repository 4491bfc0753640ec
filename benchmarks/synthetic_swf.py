"""Write a synthetic SWF trace: N jobs, whole-second submit times (so
many share one), sizes and run times from a fixed seed, arriving at about
*load* of a NODES x CORES machine.

    python benchmarks/synthetic_swf.py --jobs 5000 --nodes 16 --cores 32 --load 0.85 > trace.swf
"""

import argparse
import random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--cores", type=int, default=32)
    parser.add_argument("--load", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    rng = random.Random(options.seed)
    total = options.nodes * options.cores
    jobs = []
    for number in range(1, options.jobs + 1):
        processors = min(total, rng.choice([1, 1, 2, 4, 8, 16, 32, 64, 128, 256]))
        runtime = rng.choice([rng.randint(1, 120), rng.randint(60, 3600), rng.randint(600, 14400)])
        requested = runtime if rng.random() < 0.1 else int(runtime * rng.uniform(1.1, 3))  # a few overrun
        if rng.random() < 0.05:
            requested = max(1, runtime // 2)
        jobs.append([number, processors, runtime, requested])
    mean_work = sum(p * r for _, p, r, _ in jobs) / len(jobs)
    gap = mean_work / (total * options.load)  # mean seconds between submissions for that load
    t = 0.0
    print(f"; synthetic: {options.jobs} jobs, {options.nodes}x{options.cores} cores, load {options.load}, "
          f"seed {options.seed}")
    for number, processors, runtime, requested in jobs:
        print(f"{number} {int(t)} -1 {runtime} {processors} -1 -1 {processors} {requested} -1 1 "
              f"{1 + number % 7} 1 -1 1 -1 -1 -1")
        t += rng.expovariate(1 / gap)


if __name__ == "__main__":
    main()
