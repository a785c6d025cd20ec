#!/usr/bin/env bash
# Install chronicle into a virtualenv. The one install step that CI (.ci/run) and the
# container image (config/Dockerfile) share, so the image holds what CI tested.
#
#   scripts/install.sh VENV EXTRAS [--editable]
#
# VENV is created when missing (a relative path is relative to the repository root);
# EXTRAS names pyproject extras, comma-separated: "test,postgres" (CI), "postgres" (image).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ] || [ $# -gt 3 ] || { [ $# -eq 3 ] && [ "$3" != --editable ]; }; then
  echo "usage: scripts/install.sh VENV EXTRAS [--editable]" >&2
  exit 2
fi
venv=$1
extras=$2
editable=${3:+-e}
py=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" 2>/dev/null || {
    # Debian's python3 comes without venv: add it.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$py" -m venv "$venv"
  }
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q ${editable:+"$editable"} ".[$extras]"
