"""Score: the papers' metrics, computed in batched forward passes.

* token accuracy under teacher forcing (ZsRE ES/GS in MEND, RLEdit, HiEdit): share of answer
  tokens that are the model's argmax given the gold prefix;
* locality ``LS``: share of the unrelated prompt's answer positions where the edited model's argmax
  equals the **unedited** model's (EasyEdit); ``LS_answer``: token accuracy of ``loc_ans`` (MEND);
* CounterFact ``efficacy``: P(new) > P(old), i.e. mean-token NLL of the new answer below the old
  one's on the edit prompt (ROME/MEMIT sequence-level protocol);
* generation exact match (``*_gen``): greedy decoding without teacher forcing reproduces the whole
  answer ("The Mirage of Model Editing", 2025), the stricter number users live with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .tokens import Pair, answer_logits, collate

# The three end-of-sequence scores whose mean is ``mean``: the papers' headline numbers.
CORE_METRICS = ("ES", "GS", "LS")
# What a training run keeps of each episode's end-of-sequence metrics (statistics, TensorBoard).
EPISODE_SUMMARY = (*CORE_METRICS, "mean", "ES_first_20pct", "layers_per_edit")

PROTOCOLS = {
    "ES": "teacher-forced token accuracy of the new answer on the edit prompt",
    "GS": "teacher-forced token accuracy of the new answer on the paraphrase",
    "LS": "agreement of argmax with the unedited model on the unrelated prompt (EasyEdit)",
    "LS_answer": "teacher-forced token accuracy of the locality answer (MEND/RLEdit/HiEdit code)",
    "ES_gen": "greedy generation reproduces the new answer exactly (no teacher forcing)",
    "GS_gen": "greedy generation on the paraphrase reproduces the new answer exactly",
    "mean": "mean of ES, GS and LS",
    "ES_at_edit": "ES of each edit right after it was made, before later edits (the step reward's term)",
    "ES_first_20pct": "ES of the first 20% of the sequence, scored after the whole sequence (retention)",
    "efficacy": "CounterFact sequence-level: mean-token NLL(new) < NLL(old) on the edit prompt (ROME/MEMIT)",
}


@dataclass
class PairScores:
    accuracy: torch.Tensor  # [b] teacher-forced token accuracy
    nll: torch.Tensor  # [b] mean-token negative log-likelihood of the answer
    predictions: list[torch.Tensor]  # argmax token at each answer position
    log_probs: list[torch.Tensor] | None = None  # [answer_len, vocab] per pair, when asked


@torch.inference_mode()
def score_pairs(
    model: PreTrainedModel, pairs: list[Pair], pad_id: int, batch_size: int = 64, keep_log_probs: bool = False
) -> PairScores:
    """Teacher-forced scores of ``pairs`` (in their order), in batches of similar length.

    Sorting by length cuts the padding, and the vocabulary projection runs only on the answer columns
    (:func:`~hiedit_env.tokens.answer_logits`): the 150 pairs of a 50-edit ZsRE episode on SmolLM2
    take 6.6 s instead of 10.0 s on one core (README).
    """
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].ids))
    acc: list[torch.Tensor] = [torch.empty(())] * len(pairs)
    nll, preds, log_probs = list(acc), [torch.empty(0)] * len(pairs), [torch.empty(0)] * len(pairs)
    for start in range(0, len(pairs), batch_size):
        rows = order[start : start + batch_size]
        out, batch = answer_logits(model, collate([pairs[i] for i in rows], pad_id, model.device))
        for index, (row_logits, row_labels) in zip(rows, batch.per_pair(out.logits)):
            row_logits = row_logits.float()
            argmax = row_logits.argmax(-1)
            acc[index] = (argmax == row_labels).float().mean()
            nll[index] = F.cross_entropy(row_logits, row_labels)
            preds[index] = argmax.cpu()
            if keep_log_probs:
                log_probs[index] = row_logits.log_softmax(-1)
    return PairScores(torch.stack(acc).cpu(), torch.stack(nll).cpu(), preds, log_probs if keep_log_probs else None)


def agreement(predictions: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per pair, the share of positions where two argmax sequences agree."""
    return torch.stack([(p == r).float().mean() for p, r in zip(predictions, reference)])


@torch.inference_mode()
def generation_exact_match(
    model: PreTrainedModel, pairs: list[Pair], pad_id: int, batch_size: int = 32
) -> torch.Tensor:
    """Per pair, 1.0 if greedy decoding from the prompt yields exactly the answer's tokens."""
    hits = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        width = max(len(p.prompt) for p in chunk)
        steps = max(len(p.answer) for p in chunk)
        # Left padding keeps every prompt's last token in the same column for the decoding loop.
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, pair in enumerate(chunk):
            ids[row, width - len(pair.prompt) :] = pair.prompt
            attention[row, width - len(pair.prompt) :] = 1
        ids, attention = ids.to(model.device), attention.to(model.device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=None,
        )[:, width:].cpu()
        for row, pair in enumerate(chunk):
            answer = pair.answer
            hits.append(float(torch.equal(generated[row, : len(answer)], answer)))
    return torch.tensor(hits)
