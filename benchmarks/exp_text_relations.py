"""
Experiment: does the compact model's language model learn what the question text decides.

``benchmarks/text_prior.py`` answers 78-91% of the held-out size comparisons ('Is the large
rubber duck taller than the green domino?') from the two objects' types alone, yet the shipped
model answers 44% of all qualitative questions right and says 'No' to most yes/no questions.
This script takes the image out: the Llama decoder (and LM head) of a compact model is trained
on text only, ``'Q: <question> A: <answer></s>'`` with the loss on the answer, and after every
``--eval-every`` steps each unambiguous yes/no question is answered by comparing the likelihood
of ``'Yes.'`` and ``'No.'`` as the answer, graded against the simulator's truth.

Arms (``--arms``):

- ``toy``: one clean relation. 'Q: Is the mug bigger than the duck?' over the 14 catalogue
  types with a fixed random size order (seeded); fresh pairs every step; accuracy on 400 fresh
  questions.
- ``engine``: the engine's qualitative turns (predicate, choice, classify) of ``DATA/train``,
  with the engine's own answer templates; accuracy on the first 400 unambiguous yes/no questions
  of ``DATA/train`` and of ``DATA/heldout``, all of them and the size families alone (tall,
  short, wide, thin, big, small: the ones the object types decide).
- ``clean``: the engine's size yes/no questions with their captions and answers, but every one
  rewritten in one template per family ('Is the white cup taller than green domino?' ->
  'Yes.'); accuracy on 400 training and 400 held-out questions in that template, and on the
  same held-out questions in the engine's own phrasing (``heldout size``).
- ``short``: the same size yes/no questions in the engine's own phrasing (about 20 question
  templates per family), answered ``'Yes.'`` / ``'No.'`` instead of the engine's 10 answer
  templates; scored like ``clean``. Tells whether the question templates or the answer
  templates hold the relations back.

The decoder starts from ``--model`` (default: the shipped default) or, with ``--fresh``, from
its random initialisation. AdamW, one-cycle lr, batch 64, gradient clip 1.

Run: ``PYTHONPATH=. python benchmarks/exp_text_relations.py --data DIR/data --arms toy engine
--steps 1000`` (``DIR`` a ``spatialvlm train-default`` working folder; on 2 CPU cores about
13 min per 1,000 engine steps, 11 min per 1,500 clean steps, 2 min per 300 toy steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time
from typing import Any, Iterator

import numpy as np

SIZE_FAMILIES = ('tall', 'short', 'wide', 'thin', 'big', 'small')
COMPARATIVE = {'tall': 'taller', 'short': 'shorter', 'wide': 'wider', 'thin': 'thinner',
               'big': 'bigger', 'small': 'smaller'}
QUALITATIVE = ('predicate', 'choice', 'classify')
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / 'spatialvlm_ros' / 'model' / 'default_model'


def engine_turns(folder: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield (question, answer, metadata) of every turn of the Parquet shards in ``folder``."""
    from spatialvlm_ros.train.data import read_rows

    for row in read_rows([folder]):
        for (question, answer), meta in zip(row.turns, row.metadata, strict=False):
            yield question, answer, meta


def yes_no_truth(meta: dict[str, Any]) -> bool | None:
    """Return the simulator's yes/no truth of a predicate turn (None: not gradable)."""
    if meta.get('kind') != 'predicate':
        return None
    sim = meta.get('sim_truth') or {}
    if sim.get('ambiguous') or meta.get('ambiguous'):
        return None
    truth = sim.get('truth', meta.get('truth'))
    return truth if isinstance(truth, bool) else None


def clean_question(meta: dict[str, Any]) -> str | None:
    """Return a size predicate in one fixed template ('Is A taller than B?'), else None."""
    family = str(meta.get('qa_type', '')).split('_')[0]
    captions = meta.get('captions') or ()
    if meta.get('kind') != 'predicate' or family not in COMPARATIVE or len(captions) != 2:
        return None
    return f'Is {captions[0]} {COMPARATIVE[family]} than {captions[1]}?'


def toy_question(rng: np.random.Generator, rank: dict[str, int]) -> tuple[str, str, bool]:
    """Return a toy question, its answer and its truth ('Is the A bigger than the B?')."""
    a, b = rng.choice(sorted(rank), 2, replace=False)
    truth = rank[str(a)] > rank[str(b)]
    return f'Is the {a} bigger than the {b}?', 'Yes.' if truth else 'No.', bool(truth)


class TextLM:
    """The decoder and LM head of a compact model, trained and scored on text only."""

    def __init__(self, model_dir: Path, fresh: bool, seed: int) -> None:
        """Load the model (re-initialised when ``fresh``)."""
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        torch.manual_seed(seed)
        self.torch = torch
        if fresh:
            # built from the config: re-applying _init_weights to loaded weights is a no-op
            # (transformers marks loaded modules as initialised)
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
        else:
            model = AutoModelForImageTextToText.from_pretrained(model_dir)
        self.tokenizer = AutoProcessor.from_pretrained(model_dir).tokenizer
        self.lm = model.model.language_model
        self.head = model.lm_head
        self.model = model
        seen = {id(p) for p in self.lm.parameters()}
        self.params = list(self.lm.parameters()) + [p for p in self.head.parameters()
                                                    if id(p) not in seen]

    def batch(self, pairs: list[tuple[str, str]]) -> tuple[Any, Any, Any]:
        """Return (input ids, labels, attention mask) ``(B, L)``; labels only on the answers."""
        torch = self.torch
        seqs = []
        for question, answer in pairs:
            prompt = self.tokenizer(f'Q: {question} A:', add_special_tokens=False)['input_ids']
            reply = self.tokenizer(f' {answer}', add_special_tokens=False)['input_ids']
            seqs.append((prompt, reply + [self.tokenizer.eos_token_id]))
        width = max(len(p) + len(r) for p, r in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, (prompt, reply) in enumerate(seqs):
            n = len(prompt) + len(reply)
            ids[i, :n] = torch.tensor(prompt + reply)
            labels[i, len(prompt):n] = torch.tensor(reply)
            mask[i, :n] = 1
        return ids, labels, mask

    def token_losses(self, pairs: list[tuple[str, str]]) -> tuple[Any, Any]:
        """Return per-token cross-entropy ``(B, L-1)`` and its mask (answer tokens)."""
        ids, labels, mask = self.batch(pairs)
        logits = self.head(self.lm(input_ids=ids, attention_mask=mask).last_hidden_state)
        target = labels[:, 1:]
        loss = self.torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), target.clamp(min=0), reduction='none')
        return loss, target != -100

    def says_yes(self, questions: list[str]) -> np.ndarray:
        """Return, per question, whether 'Yes.' is likelier than 'No.' as the whole answer."""
        with self.torch.no_grad():
            scores = []
            for answer in ('Yes.', 'No.'):
                loss, mask = self.token_losses([(q, answer) for q in questions])
                scores.append((loss * mask).sum(1).numpy())
        return scores[0] < scores[1]


def accuracy(lm: TextLM, items: list[tuple[str, bool]]) -> float | None:
    """Return the share of ``(question, truth)`` answered right (None when empty)."""
    if not items:
        return None
    hits = []
    for s in range(0, len(items), 100):
        chunk = items[s:s + 100]
        hits += list(lm.says_yes([q for q, _ in chunk]) == np.array([t for _, t in chunk]))
    return float(np.mean(hits))


def run(arm: str, data: Path | None, model_dir: Path, fresh: bool, steps: int, lr: float,
        eval_every: int, seed: int) -> list[dict[str, Any]]:
    """Train one arm; return one row per evaluation."""
    import torch

    from spatialvlm_ros.sim.catalog import CATALOG

    rng = np.random.default_rng(seed)
    lm = TextLM(model_dir, fresh, seed)
    if arm == 'toy':
        order = rng.permutation(len(CATALOG))
        rank = {name: int(r) for name, r in zip(CATALOG, order, strict=True)}
        probe = [toy_question(rng, rank) for _ in range(400)]
        sets = {'toy': [(q, t) for q, _, t in probe]}

        def sample() -> list[tuple[str, str]]:
            return [toy_question(rng, rank)[:2] for _ in range(64)]
    elif arm in ('clean', 'short'):
        if data is None:
            raise SystemExit(f'the {arm} arm needs --data')
        train = [(clean_question(m) if arm == 'clean' else q, 'Yes.' if m['truth'] else 'No.')
                 for q, _, m in engine_turns(data / 'train')
                 if clean_question(m) and isinstance(m.get('truth'), bool)]
        heldout = [(q, yes_no_truth(m), m) for q, _, m in engine_turns(data / 'heldout')
                   if clean_question(m) and yes_no_truth(m) is not None][:400]
        training_graded = [(clean_question(m) if arm == 'clean' else q, yes_no_truth(m))
                           for q, _, m in engine_turns(data / 'train')
                           if clean_question(m) and yes_no_truth(m) is not None][:400]
        sets = {'clean train' if arm == 'clean' else 'train size': training_graded,
                'clean heldout': [(clean_question(m), t) for _, t, m in heldout],
                'heldout size': [(q, t) for q, t, _ in heldout]}
        print(f'{len(train)} size predicates to train on', flush=True)

        def sample() -> list[tuple[str, str]]:
            return [train[i] for i in rng.integers(len(train), size=64)]
    else:
        if data is None:
            raise SystemExit('the engine arm needs --data')
        train = [(q, a, m) for q, a, m in engine_turns(data / 'train')
                 if m.get('kind') in QUALITATIVE]
        sets = {}
        for split, turns in (('train', train), ('heldout', list(engine_turns(data / 'heldout')))):
            graded = [(q, yes_no_truth(m), m) for q, _, m in turns
                      if yes_no_truth(m) is not None][:400]
            sets[split] = [(q, t) for q, t, _ in graded]
            sets[f'{split} size'] = [(q, t) for q, t, m in graded
                                     if str(m.get('qa_type', '')).split('_')[0]
                                     in SIZE_FAMILIES]

        def sample() -> list[tuple[str, str]]:
            return [train[i][:2] for i in rng.integers(len(train), size=64)]
    optimizer = torch.optim.AdamW(lm.params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps,
                                                   pct_start=0.05)
    rows, losses, start = [], [], time.perf_counter()

    def evaluate(step: int) -> None:
        lm.model.eval()
        row = {'arm': arm, 'init': 'fresh' if fresh else 'model', 'step': step,
               'loss': float(np.mean(losses[-eval_every:])) if losses else None,
               'seconds': round(time.perf_counter() - start, 1)}
        row.update({name: accuracy(lm, items) for name, items in sets.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
        lm.model.train()

    evaluate(0)
    for step in range(1, steps + 1):
        loss, mask = lm.token_losses(sample())
        loss = (loss * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    return rows


def main() -> None:
    """Run the arms and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--data', type=Path, help='train-default data folder (engine arm)')
    parser.add_argument('--arms', nargs='+', choices=('toy', 'engine', 'clean', 'short'),
                        default=['toy'])
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL, help='model folder')
    parser.add_argument('--fresh', action='store_true', help='re-initialise the decoder')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--eval-every', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', action='store_true', help='print the rows as JSON')
    args = parser.parse_args()
    if args.steps < 1 or args.eval_every < 1 or not args.lr > 0:
        parser.error('--steps, --eval-every and --lr must be positive')
    rows = [r for arm in args.arms for r in run(arm, args.data, args.model, args.fresh,
                                                args.steps, args.lr, args.eval_every,
                                                args.seed)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    columns = [c for c in ('toy', 'train', 'train size', 'heldout', 'clean train',
                           'clean heldout', 'heldout size') if any(c in r for r in rows)]

    def cell(value: Any) -> str:
        return '-' if value is None else f'{value:.3f}'

    print('| arm | init | step | loss | ' + ' | '.join(columns) + ' | seconds |')
    print('|---|---|---|---|' + '---|' * len(columns) + '---|')
    for r in rows:
        print(f"| {r['arm']} | {r['init']} | {r['step']} | {cell(r['loss'])} | "
              + ' | '.join(cell(r.get(c)) for c in columns) + f" | {r['seconds']:.0f} |")


if __name__ == '__main__':
    main()
