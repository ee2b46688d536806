"""How far the key statistics from the model's own sampled text are from those of the edit data's prompts.

MEMIT and AlphaEdit weigh their updates by ``C = E[k k^T]`` of the edited modules' inputs; offline,
the locate agents estimate it from text sampled from the model (``stats_source="model"``). This
script computes ``C`` of the same modules from the prompts of a data set's training split (edit
prompts, paraphrases and unrelated prompts, one text each) and compares the two spectrally
(:func:`hiedit_agents.locate.stats.compare_second_moments`): relative Frobenius distance, overlap of
the top eigenvector subspaces, and overlap of the subspaces AlphaEdit's null space keeps.

    python benchmarks/key_statistics.py --agent memit --dataset ../shared/data/zsre/zsre_mend_1k.json --records 200 \
        --threads 1 --out benchmarks/results/locate/key_statistics_zsre.json
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import gymnasium as gym
import torch
from hiedit_agents import agent_class, make_agent
from hiedit_agents.locate.stats import compare_second_moments, key_second_moments

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_env.files import write_json, write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--agent", default="memit", choices=("rome", "memit", "alphaedit"), help="whose modules and preset"
    )
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--split", default="train")
    parser.add_argument("--records", type=int, default=None, help="the split's first N records only (default: all)")
    parser.add_argument("--top", type=int, default=32, help="eigenvectors in the compared top subspaces")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    cls = agent_class(args.agent)
    env = gym.make(
        "HiEdit-v0",
        model=args.model,
        dataset=args.dataset,
        split=args.split,
        num_edits=1,
        evaluate_generation=False,
        **cls.acting_requirements({}),
    )
    agent = make_agent(args.agent, env)  # computes (or reads) C from sampled text
    unwrapped, hp = env.unwrapped, agent.hparams
    names = [unwrapped.candidate_modules[i] for i in agent.indices]
    prompts = [text for r in unwrapped.records[: args.records] for text in (r.prompt, r.rephrase, r.loc_prompt)]
    with tempfile.TemporaryDirectory() as folder, unwrapped.unedited():
        path = Path(folder) / "prompts.txt"
        write_text(path, "\n".join(" ".join(p.split()) for p in prompts) + "\n")
        sampled = key_second_moments(
            unwrapped.model,
            unwrapped.tokenizer,
            unwrapped.shared.name,
            names,
            hp["stats_source"],
            hp["stats_samples"],
            hp["stats_length"],
            hp["stats_seed"],
            hp["stats_dir"],
        )
        from_prompts = key_second_moments(
            unwrapped.model,
            unwrapped.tokenizer,
            unwrapped.shared.name,
            names,
            str(path),
            len(prompts),
            hp["stats_length"],
            cache_dir=folder,
        )
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "records": args.records,
        "prompts": len(prompts),
        "sampled": {k: hp[k] for k in ("stats_source", "stats_samples", "stats_length", "stats_seed")},
        "top": args.top,
        "modules": {name: compare_second_moments(sampled[name], from_prompts[name], args.top) for name in names},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    for name, figures in result["modules"].items():
        print(name, {k: round(v, 3) for k, v in figures.items()})


if __name__ == "__main__":
    main()
