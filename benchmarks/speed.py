"""The speed benchmark is ``hiedit speed`` (:mod:`hiedit_agents.speed`); this script runs it with the
same options and this script's default data set, ZsRE, so the commands recorded in the findings keep
working:

    python benchmarks/speed.py --model smollm2-135m --num-edits 30 --out speed.json
"""

import sys

from hiedit_agents.cli import main

ZSRE = "../shared/data/zsre/zsre_mend_1k.json"

if __name__ == "__main__":
    status = main(["speed", "--dataset", ZSRE, *sys.argv[1:]])  # a --dataset given comes later and wins
    if status:
        sys.exit(status)
