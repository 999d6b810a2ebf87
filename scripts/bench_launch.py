"""What one tiny training command costs to launch, side by side: a new interpreter at HEAD, the same run
forked from the tests' warm server (tests/helpers/warm.py), and optionally a new interpreter running another
commit's code (the baseline: `git worktree add /tmp/base <rev>`, then `--baseline-src /tmp/base/src`). Then
`delving-train --help` (Hydra lists every config group), new interpreters only.

The runs alternate (baseline, HEAD, warm, baseline, ...) so a machine's drift hits each alike; the table gives
the median wall time per launch and the ratio against the baseline (or against HEAD's new interpreter).

    python scripts/bench_launch.py --runs 5 --baseline-src /tmp/base/src
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import warm  # noqa: E402  (the tests' helpers: the warm server and the tiny run)
from helpers.runs import EQUAL_RUN, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env  # noqa: E402

COMMAND = [sys.executable, "-m", "delving.train", *TINY_DATA, *TINY_MODEL, *TINY_TRAIN, *EQUAL_RUN]


def _timed(kind: str, run_dir: Path, baseline_src: str | None) -> float:
    command = [*COMMAND[:3], "--help"] if kind.endswith("--help") else [*COMMAND, f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    if kind == "warm":
        result = warm.run(command, env=cli_env(), cwd=REPO, timeout=600)
    else:
        env = cli_env(PYTHONPATH=baseline_src) if kind.startswith("baseline") and baseline_src else cli_env()
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="launches of each kind")
    parser.add_argument("--baseline-src", help="the src/ folder of another commit, run as a new interpreter")
    args = parser.parse_args()
    kinds = (["baseline"] if args.baseline_src else []) + ["HEAD", "warm"]
    kinds += [f"{kind} --help" for kind in kinds if kind != "warm"]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bench_launch_") as folder:
        warm.run(
            [*COMMAND, f"hydra.run.dir={folder}/start"], env=cli_env(), cwd=REPO, timeout=600
        )  # server up
        for i in range(args.runs):
            for kind in kinds:
                times[kind].append(_timed(kind, Path(folder) / f"{kind}-{i}", args.baseline_src))
    print(f"{'launch':<48} {'median s':>9} {'min s':>7} {'ratio':>7}")
    for kind in kinds:
        label = {
            "baseline": f"new interpreter, {args.baseline_src}",
            "HEAD": "new interpreter, HEAD",
            "warm": "forked from the warm server, HEAD",
        }[kind.removesuffix(" --help")] + (", --help" if kind.endswith("--help") else "")
        reference = times[kinds[0] + (" --help" if kind.endswith("--help") else "")]
        ratio = statistics.median(times[kind]) / statistics.median(reference)
        print(f"{label[-48:]:<48} {statistics.median(times[kind]):9.2f} {min(times[kind]):7.2f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
