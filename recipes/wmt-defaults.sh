# The knobs the WMT recipes share, with the paper's settings as defaults (each recipe's header documents
# them); sourced after the recipe has set OUT, SRC and TGT.
DATA=${DATA:-$OUT/download}
RAW=${RAW:-$OUT/raw}
VOCAB_SIZE=${VOCAB_SIZE:-32000}
PRESET=${PRESET:-base}
LR=${LR:-0.0003}
WARMUP=${WARMUP:-16000}
CLIP_NORM=${CLIP_NORM:-5}
LABEL_SMOOTHING=${LABEL_SMOOTHING:-0.1}
MAX_TOKENS=${MAX_TOKENS:-8192}
MAX_TIME=${MAX_TIME:-36000}
MAX_UPDATES=${MAX_UPDATES:-0}
VALID_EVERY=${VALID_EVERY:-1000}
VALID_MAX_SENTENCES=${VALID_MAX_SENTENCES:-0}
MODES=${MODES:-sync async async-accum}
SEEDS=${SEEDS:-1}
WORKERS=${WORKERS:-4}
ACCUM=${ACCUM:-$WORKERS}
DEVICES=${DEVICES:-cuda:0,cuda:1,cuda:2,cuda:3}
SIMULATE=${SIMULATE:-0}
WORKER_SPEEDS=${WORKER_SPEEDS:-}
BEAM=${BEAM:-5}
X=${X:-$([[ $SIMULATE == 1 ]] && echo predicted || echo time)}
TARGET_BLEU=${TARGET_BLEU:-}
NMT=${NMT:-nmt}
SACREBLEU_BIN=${SACREBLEU_BIN:-sacrebleu}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
