"""ParaUni training leaves the VLM's understanding untouched: answers and logits bit-identical."""

from __future__ import annotations

import torch

from parauni.toy.data import heldout_examples
from parauni.toy.vlm import answer, encode_qa_batch, heldout_questions
from parauni.train.config import load_config
from parauni.train.trainer import Trainer


def _probe(vlm, tokenizer, examples):
    rows = heldout_questions(examples)[:24]
    images, questions = [examples[i].image for i, *_ in rows], [q for _, _, q, _ in rows]
    batch = encode_qa_batch(tokenizer, images, questions)
    with torch.no_grad():
        logits = vlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"]).logits
    return logits, answer(vlm, tokenizer, images, questions)


def test_stage_two_training_keeps_the_toy_vlm_bit_identical(tmp_path):
    cfg = load_config(None, ["model.source=toy", "train.stage=II", "train.steps=2", "train.batch_size=4",
                             "train.logger=none", "optim.warmup_steps=1", f"train.output_dir={tmp_path}"])
    trainer = Trainer(cfg, progress=False)
    vlm, tok = trainer.pipe.vlm, trainer.pipe.tokenizer
    examples = heldout_examples(4, seed=0)
    state = {k: v.clone() for k, v in vlm.state_dict().items()}
    logits, answers = _probe(vlm, tok, examples)
    queries = trainer.pipe.conditioner.queries.detach().clone()
    trainer.run()
    assert not torch.equal(queries, trainer.pipe.conditioner.queries)  # ParaUni's own weights did train
    vlm.eval()
    for k, v in vlm.state_dict().items():
        assert torch.equal(v, state[k]), k
    logits2, answers2 = _probe(vlm, tok, examples)
    assert torch.equal(logits, logits2) and answers == answers2
    assert sum(a == t for a, (*_, t) in zip(answers, heldout_questions(examples)[:24], strict=False)) >= 20
