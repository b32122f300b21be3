#!/usr/bin/env bash
# Runs the whole test suite, installing first what it needs and the machine lacks:
#
#   samtools          the oracle every dataset is checked against
#   gzip              makes the plain-gzip bad-input case
#   systemd           systemd-analyze verifies the unit and scores its hardening
#   prometheus        a real Prometheus scrapes the daemon; promtool checks metrics and rules
#   postgresql        the coordination tests start a private cluster (initdb, pg_ctl; as
#                     nobody when run as root, since the server refuses root)
#   pyarrow, duckdb   the independent readers of the datasets, in a venv (target/test-venv):
#                     never pip outside one (Debian's python3 is externally managed)
#   bamflow (Python)  built from ./python by maturin (from PyPI) into the same venv, with
#                     pytest, polars, tqdm and pyspark; its pytest suite runs after cargo's
#                     tests
#   a JRE             the Spark tests run a real Spark (local[2]) from pyspark
#   slurm-wlm         tests/slurm/run.sh runs examples/slurm on a single-node Slurm it starts
#   moto[server]      the local S3-compatible server the s3:// output tests start (venv)
#
# Debian packages are installed with apt-get (through sudo when not root). Extra arguments go
# to `cargo test` and skip the Python suite, e.g. `scripts/test.sh -p bamflow`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v samtools >/dev/null || missing+=(samtools)
command -v gzip >/dev/null || missing+=(gzip)
command -v systemd-analyze >/dev/null || missing+=(systemd)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v java >/dev/null || missing+=(default-jre-headless)
{ command -v slurmctld >/dev/null && command -v slurmd >/dev/null; } || missing+=(slurm-wlm)

venv=target/test-venv
python=${PYTHON:-python3}
# Debian's python3 creates a venv only with python3-venv (ensurepip) installed.
if [ ! -x "$venv/bin/python" ] && ! "$python" -c 'import ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  log=$(mktemp)
  as_root apt-get install -y -qq "${missing[@]}" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  rm -f "$log"
fi

if ! "$venv/bin/python" -c 'import pyarrow, duckdb' 2>/dev/null; then
  echo "scripts/test.sh: installing pyarrow and duckdb into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pyarrow duckdb
fi
# The object-store tests run moto's S3 server from the venv.
if ! "$venv/bin/python" -c 'import moto.server' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'
fi
# The tests run `python3` and `moto_server`: the venv's, first on PATH.
PATH="$PWD/$venv/bin:$PATH"
export PATH

samtools --version | head -1
if [ $# -gt 0 ]; then
  exec cargo test --workspace "$@"
fi
cargo test --workspace
# The e2e tests built the binaries the example runs (target/debug: cargo test's profile).
tests/slurm/run.sh

echo "scripts/test.sh: building the Python package into $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check './python[test]'
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
