#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what it needs (scripts/setup.sh), checks that
# the generated protobuf code is current, builds the Wasm test guests, then runs unit and end-to-end
# tests (real containerd 1.6/1.7/2.1, runc, this shim, and a real kubelet with its control plane). Needs root.
# Extra args go to pytest.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

bash scripts/setup.sh
PY="$REPO_ROOT/.venv/bin/python"

echo "[test] generated protobuf code is current"
"$PY" scripts/gen_proto.py --check

echo "[test] building test guests"
"$PY" scripts/build_guests.py

echo "[test] building the Spin HTTP test apps (cached by source hash)"
"$PY" scripts/build_http_apps.py

echo "[test] building the Kubernetes node's binaries (cached by version; ~13 min the first time)"
bash scripts/build_kube.sh

echo "[test] building SpinKube's spin-operator (cached by version; ~3 min the first time)"
bash scripts/build_spin_operator.sh

echo "[test] pytest"
set +e
"$PY" -m pytest tests -p no:cacheprovider -q -ra "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "[test] pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
exit $status
