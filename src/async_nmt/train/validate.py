"""Validation on a parameter snapshot: per-token NLL on the valid split, and the BLEU/chrF (sacreBLEU) of its
translations with the run's --valid-beam (1: greedy), both at the run's --precision."""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import sentencepiece as spm
import torch
from torch import nn

from async_nmt.data.batches import collate_rows, make_batches
from async_nmt.data.binarize import load_manifest, load_split, read_lines
from async_nmt.errors import UserError
from async_nmt.score import corpus_scores, tokenizer_for
from async_nmt.train.step import StepStats, eval_step
from async_nmt.translate import OutOfMemoryAdvice, translate_lines


class Validator:
    """Holds the valid split (the first `max_sentences` lines, all if 0) ready to evaluate any snapshot,
    translating it with a beam of `beam` (1: greedy)."""

    def __init__(self, bin_dir: Path, max_tokens: int, max_len: int, max_sentences: int = 0, beam: int = 1):
        split = load_split(bin_dir, "valid")
        manifest = load_manifest(bin_dir)
        self.language = manifest.get("tgt")  # BLEU's tokenizer follows it (`tokenizer_for`)
        # a vocabulary of case-folded text (`--normalization *_cf`) writes case-folded output: scored against
        # the text as written, a perfect model's BLEU was about 0, and best.pt and --patience followed that
        self.casefold = str(manifest.get("options", {}).get("normalization", "")).endswith("_cf")
        n = len(split.src) if max_sentences <= 0 else min(max_sentences, len(split.src))
        src_len, tgt_len = split.src.lengths[:n], split.tgt.lengths[:n]
        self.batches = [
            collate_rows(split.src, split.tgt, rows, max_len)
            for rows in make_batches(src_len, tgt_len, max_tokens, max_len)
        ]
        texts = {side: read_lines(bin_dir, "valid", side) for side in ("src", "tgt")}
        for side, lines in texts.items():  # before the run folder changes
            if len(lines) != len(split.src):
                raise UserError(f"{bin_dir}: the valid text's {side} side has {len(lines)} lines but the valid "
                                f"split's ids {len(split.src)}; run `nmt preprocess` again")  # fmt: skip
        self.sources, self.references = texts["src"][:n], texts["tgt"][:n]
        if self.casefold:  # (in the fingerprint too: a resume's best BLEU is not compared with a cased one)
            self.references = [line.casefold() for line in self.references]
        self.max_tokens = max_tokens
        self.beam = beam
        self.name = f"{bin_dir}/valid.{manifest.get('src')}"  # (warnings of its lines name it, once a run)
        self.notices: Counter[str] = Counter()
        # what a resume compares: the best BLEU so far was measured on these sentences, and with this tokenizer
        # where it is not 13a (a zh run begun before 2026-12-05 scored with 13a: about 0, not comparable); the
        # beam is the run's --valid-beam, which a resume keeps (RESUME_FIXED)
        self.tokenize = tokenizer_for(self.language)
        measured = self.sources + self.references + ([f"tokenize:{self.tokenize}"] if self.tokenize else [])
        self.fingerprint = zlib.crc32("\n".join(measured).encode("utf-8"))

    def out_of_memory_advice(self, resumable: bool = True) -> OutOfMemoryAdvice:
        """What to do where validation's search runs the device out of memory, in nmt-train's options (it named
        `nmt translate`'s --beam, --max-len-a and --device, which nmt-train has not, and a smaller --max-tokens,
        which a resume keeps); `resumable`: whether the run has a checkpoint to resume from (before its first
        save it said to resume, which was refused)."""
        if resumable:
            fix = "validating with the run's --valid-beam, which a resume keeps: resume with --devices of more memory"
            smaller = ", or start a new run with a smaller --valid-beam"
        else:
            fix = "validating before the run's first checkpoint: start it over (--force) with --devices of more memory"
            smaller = ", or a smaller --valid-beam"
        return OutOfMemoryAdvice("a new run with a smaller --max-tokens, which batches validation too, avoids this",
                                 fix + (smaller if self.beam > 1 else ""))  # fmt: skip

    def __call__(
        self,
        model: nn.Module,
        sp: spm.SentencePieceProcessor,
        amp_dtype: torch.dtype | None,
        progress: Callable[[int], object] | None = None,
        resumable: bool = True,
    ) -> dict[str, float]:
        """The valid loss, perplexity, and the BLEU and chrF of its translations (greedy, or beam search of
        `self.beam`); `progress` is called with the number of sentences translated, as they are; `resumable`:
        see `out_of_memory_advice`."""
        device = next(model.parameters()).device
        total = StepStats()
        for batch in self.batches:
            total.add(eval_step(model, batch.to(device), amp_dtype))
        valid_loss = float(total.nll) / max(total.tokens, 1)
        hyps = translate_lines(model, sp, self.sources, beam=self.beam, max_tokens=self.max_tokens, device=device,
                               amp_dtype=amp_dtype, progress=progress, notices=self.notices, name=self.name,
                               advice=self.out_of_memory_advice(resumable))  # fmt: skip
        if self.casefold:  # (sentencepiece's folding is NFKC's; Python's folds what it leaves too, as here)
            hyps = [line.casefold() for line in hyps]
        scores = corpus_scores(hyps, self.references, self.language)
        return {
            "valid_loss": valid_loss,
            "valid_ppl": math.exp(min(valid_loss, 50.0)),
            "bleu": scores["bleu"],
            "chrf": scores["chrf"],
        }
