# Sourced by the scripts: makes .venv from pyproject.toml when it is missing or stale.
# Why a stamp: re-installing on every run costs seconds; the stamp changes when pyproject.toml does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${COORD_EXTRAS:-dev,mcp,semantic}"
STAMP="$VENV/.coord-stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)-$EXTRAS"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  PY="$(command -v python3.11 || command -v python3)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "coord needs Python 3.11 or newer" >&2; exit 1; }
  echo "bootstrapping $VENV (extras: $EXTRAS) ..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" >&2
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
