#!/usr/bin/env bash
# bamflow.scan beside polars-bio and oxbow, and bamflow.convert beside the binary, on the
# shared bench corpus. Needs the shared bench set up (../shared/bench/README.md: setup.sh and
# make-corpus.sh in a writable copy, PEERS, default /tmp/peers); installs the bamflow wheel
# into its venv.
#
#   bench/python.sh
#   PEERS=/tmp/peers INPUTS="/tmp/peers/data/short2m.bam" THREADS=2 bench/python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-/tmp/peers}
INPUTS=${INPUTS:-"$PEERS/data/short2m.bam $PEERS/data/long.bam $PEERS/data/ubam.bam"}
THREADS=${THREADS:-$(nproc)}
python=$PEERS/.venv/bin/python

cargo build --release --quiet --bins
"$python" -m pip install --quiet maturin
rm -rf target/wheels
"$python" -m maturin build --release --quiet -m python/Cargo.toml --out target/wheels
"$python" -m pip install --quiet --force-reinstall --no-deps target/wheels/bamflow-*.whl
# shellcheck disable=SC2086
exec "$python" bench/python_scan.py $INPUTS --threads "$THREADS" --python "$python" --bamflow target/release/bamflow
