#!/usr/bin/env bash
# Create (once) and update the project's virtual environment; print its python.
# The venv lives outside the clone ($FACEIGNITE_VENV, default ~/.cache/faceignite/venv) so that
# fresh clones reuse it; it is rebuilt from requirements.txt whenever that file or the clone moves.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FACEIGNITE_VENV:-$HOME/.cache/faceignite/venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
fi
stamp="$venv/.faceignite-stamp"
want="$(cat "$repo/requirements.txt" "$repo/pyproject.toml" | sha1sum | cut -c1-40) $repo"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing requirements.txt into $venv (first time: a few minutes)" >&2
  (cd "$repo" && "$venv/bin/python" -m pip install -q -r requirements.txt >&2)
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
