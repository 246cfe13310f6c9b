#!/usr/bin/env bash
# WMT16 English->Romanian, trained as in wmt17-en-de.sh (Aji & Heafield's settings: transformer-base on 4
# GPUs, lr 0.0003, 16,000 warmup updates, inverse-sqrt decay, label smoothing 0.1, Adam 0.9/0.98/1e-9,
# clipping 5). It downloads Europarl v8 (statmt.org) and SETIMES2 (OPUS), takes newsdev2016 (dev) and
# newstest2016 (test) through sacreBLEU, writes OUT/raw/{train,valid,test}.{SRC,TGT}, then trains sync,
# async and async-accum, translates and scores the test set with each, and compares them with `nmt report`.
#
# Knobs (environment variables; default in brackets):
#   OUT                 output folder: raw/, bin/, runs/{sync,async,async-accum}/, test/, report/ [runs/wmt16-en-ro]
#   DATA                downloads (archives, unpacked corpora, sacreBLEU's test sets); files already there
#                       are used as they are, so a DATA prepared elsewhere makes the recipe offline [OUT/download]
#   RAW                 where the raw corpus is written (not again once OUT/bin is made) [OUT/raw]
#   SRC, TGT            translation direction [en, ro]
#   VOCAB_SIZE          joint sentencepiece vocabulary [32000]
#   PRESET              model size: micro, tiny, small, base, big [base]
#   LR, WARMUP          peak learning rate and linear warmup updates, then inverse-sqrt decay [0.0003, 16000]
#   CLIP_NORM           gradient-norm clipping, 0 = off [5]
#   LABEL_SMOOTHING     [0.1]
#   MAX_TOKENS          token budget of one worker's batch [8192]
#   MAX_TIME            seconds of training clock per run, 0 = no limit [36000]
#   MAX_UPDATES         updates per run, 0 = no limit [0]
#   VALID_EVERY         updates between validations [1000]
#   VALID_MAX_SENTENCES validate on the first N valid sentences, 0 = all [0]
#   MODES               the runs to train [sync async async-accum]
#   SEEDS               the seeds of each mode, separated by spaces; several: runs/MODE-sSEED each, and the
#                       report's mean ± sd of each mode [1]
#   WORKERS             workers of every run [4]
#   ACCUM               pushes summed per async-accum update [WORKERS]
#   DEVICES             comma-separated devices [cuda:0,cuda:1,cuda:2,cuda:3]
#   SIMULATE            1 = emulate the workers in one process on one device (--simulate) [0]
#   WORKER_SPEEDS       relative worker speeds, e.g. 1,1,1,0.5 (emulated, or real workers slowed) [none]
#   BEAM                beam size of the test-set translation [5]
#   X                   report axis: time, predicted, updates, tokens [predicted with SIMULATE=1, else time]
#   TARGET_BLEU         the report's target BLEU [the sync run's best - 0.5, at least half of it]
#   NMT                 the command prefix [nmt]
#   SACREBLEU_BIN       the sacreBLEU command [sacrebleu]
#   PYTHON              a Python for unpacking zip files [python3]
#   DRY_RUN             1 = print the commands instead of running them (no download, nothing written) [0]
set -euo pipefail

OUT=${OUT:-runs/wmt16-en-ro}
SRC=${SRC:-en}
TGT=${TGT:-ro}

source "$(dirname "${BASH_SOURCE[0]}")/wmt-defaults.sh"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if data_needed; then
    run mkdir -p "$DATA" "$RAW"
    get https://data.statmt.org/wmt16/translation-task/training-parallel-ep-v8.tgz training-parallel-ep-v8.tgz \
        training-parallel-ep-v8/europarl-v8.ro-en.en training-parallel-ep-v8/europarl-v8.ro-en.ro
    get https://object.pouta.csc.fi/OPUS-SETIMES/v2/moses/en-ro.txt.zip SETIMES2.en-ro.txt.zip \
        SETIMES.en-ro.en SETIMES.en-ro.ro
    raw_train training-parallel-ep-v8/europarl-v8.ro-en SETIMES.en-ro
    raw_eval valid wmt16/dev
    raw_eval test wmt16
fi
compare
