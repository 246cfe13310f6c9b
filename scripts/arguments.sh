# Sourced first by the shell scripts here and by the recipes (through recipes/common.sh), whose knobs are
# environment variables.
#   no_arguments ARG...  -h or --help prints the script's header (its knobs) and exits 0; any other argument
#       is refused, exit 2. (Arguments were ignored: `--help` began the whole job, which for the experiments
#       writes into docs/results.)
#   from_the_root  refuses to run from elsewhere than the root of the script's own repository, where it
#       finds what it runs (from elsewhere each benchmark failed to find its script).
#   refuse MESSAGE...  `error: MESSAGE` on stderr, exit 2: a knob or an argument that cannot be.
refuse() {
    echo "error: $*" >&2
    exit 2
}

no_arguments() {
    (($# == 0)) && return 0
    if [[ $# == 1 && ($1 == -h || $1 == --help) ]]; then
        sed -n '2,/^set -/{/^#/s/^# \{0,1\}//p}' "$0"
        exit 0
    fi
    refuse "$(basename "$0") takes no arguments (got: $*); its knobs are environment variables" \
        "(see bash $0 --help)"
}

from_the_root() {
    [ "$(cd "$(dirname "$0")" && pwd -P)" = "$(pwd -P)/scripts" ] && return 0
    refuse "run it from the repository root (bash scripts/$(basename "$0"))"
}
