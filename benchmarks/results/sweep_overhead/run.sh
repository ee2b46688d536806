#!/usr/bin/env bash
# Sweep overhead: `hiedit sweep benchmarks/specs/smoke.yaml` (one trial at a time, then two) against the
# same cells run one after another by hand with `hiedit train` / `hiedit evaluate`, then a resume
# demonstration (a sweep stopped after its first cell and started again). Writes timings.json here.
#   bash benchmarks/results/sweep_overhead/run.sh /tmp/sweep_overhead
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK=${1:?usage: run.sh WORK_FOLDER}
HERE=benchmarks/results/sweep_overhead
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
H=".venv/bin/hiedit"
rm -rf "$WORK" && mkdir -p "$WORK"
C="--model test-tiny-gpt2 --dataset default --threads 1"
K='{"validation_edits": 8, "validate_every": 8}'
now() { date +%s.%N; }

t0=$(now)
for S in 0 1; do $H evaluate --agent noop $C --split test --num-edits 4 --seed $S --out "$WORK/hand/noop_$S.json" >/dev/null; done
for T in 0 1; do
  $H train --agent all $C --split train --num-edits 4 --steps 8 --seed $T --out "$WORK/hand/all_$T" >/dev/null
  $H train --agent rledit $C --split train --num-edits 4 --steps 8 --seed $T --agent-kwargs "$K" --out "$WORK/hand/rledit_$T" >/dev/null
  for S in 0 1; do
    $H evaluate --agent all --checkpoint "$WORK/hand/all_$T" $C --split test --num-edits 4 --seed $S --out "$WORK/hand/all_${T}_$S.json" >/dev/null
    $H evaluate --agent rledit --checkpoint "$WORK/hand/rledit_$T" $C --split test --num-edits 4 --seed $S --out "$WORK/hand/rledit_${T}_$S.json" >/dev/null
    $H evaluate --agent rledit --checkpoint "$WORK/hand/rledit_$T" $C --split test --num-edits 4 --seed $S \
        --agent-kwargs '{"max_size_ratio": 3}' --out "$WORK/hand/bounded_${T}_$S.json" >/dev/null
  done
done
t1=$(now)
$H sweep benchmarks/specs/smoke.yaml --out "$WORK/sweep1" --max-concurrent 1 > "$WORK/sweep1.log" 2>&1
t2=$(now)
$H sweep benchmarks/specs/smoke.yaml --out "$WORK/sweep2" --max-concurrent 2 > "$WORK/sweep2.log" 2>&1
t3=$(now)
# resume: stopped after the first finished cell, then the same command again
$H sweep benchmarks/specs/smoke.yaml --out "$WORK/resume" --max-cells 1 > "$WORK/resume1.log" 2>&1
first=$(ls "$WORK/resume/cells")  # the one finished cell
find "$WORK/resume/cells/$first" -type f -printf '%P %T@ %s\n' | sort > "$WORK/resume_before.txt"
$H sweep benchmarks/specs/smoke.yaml --out "$WORK/resume" > "$WORK/resume2.log" 2>&1
find "$WORK/resume/cells/$first" -type f -printf '%P %T@ %s\n' | sort > "$WORK/resume_after.txt"
.venv/bin/python - "$WORK" "$t0" "$t1" "$t2" "$t3" > "$HERE/timings.json" <<'PY'
import json, re, sys
from pathlib import Path
work, t0, t1, t2, t3 = Path(sys.argv[1]), *map(float, sys.argv[2:])
import csv
peaks = [float(r["peak_rss_mb"]) for r in csv.DictReader((work / "sweep1" / "results.csv").open())]
# name, mtime and size of every file of the cell finished before the stop, before and after the restart
unchanged = (work / "resume_before.txt").read_text() == (work / "resume_after.txt").read_text()
summary = re.search(r"(\d+) cells: (\d+) already finished, (\d+) run now", (work / "resume2.log").read_text())
print(json.dumps({
    "question": "how much slower is a sweep than the same cells run one after another by hand?",
    "spec": "benchmarks/specs/smoke.yaml (5 cells: 2 training seeds of all and rledit, noop; 18 evaluations of 4 edits on test-tiny-gpt2)",
    "by_hand_seconds": round(t1 - t0, 1), "sweep_one_at_a_time_seconds": round(t2 - t1, 1),
    "sweep_two_at_a_time_seconds": round(t3 - t2, 1),
    "ratio_one_at_a_time": round((t2 - t1) / (t1 - t0), 2), "ratio_two_at_a_time": round((t3 - t2) / (t1 - t0), 2),
    "worker_peak_rss_mb": round(max(peaks), 1),
    "resume": {"cells": int(summary[1]), "finished_before_restart": int(summary[2]), "run_on_restart": int(summary[3]),
               "finished_cells_run_again": int(summary[3]) - (int(summary[1]) - int(summary[2])),
               "finished_cell_files_unchanged": unchanged},
    "note": "wall seconds of whole commands (the sweep's include starting Ray); by hand: 18 hiedit processes; "
            "the sweep also scores each sequence once mid-way (curve_points 2)",
}, indent=2))
PY
cat "$HERE/timings.json"
