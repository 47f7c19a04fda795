# Shared by scripts/run and scripts/test. Sourced, not executed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Build caches live outside the work tree so every clone (and CI) on this machine shares them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgesync/target}"
export EDGESYNC_HOME="${EDGESYNC_HOME:-$HOME/.cache/edgesync}"
mkdir -p "$CARGO_TARGET_DIR"

say() { printf '\n==> %s\n' "$*"; }
