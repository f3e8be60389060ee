#!/usr/bin/env bash
# make demo: build an AArch64 SD-card image end to end in the local sandbox cloud.
#
#   1. brings the sandbox up (make sandbox-up) unless it is already running,
#   2. runs playbooks/build-sd-aarch64.yml against inventories/sandbox
#      (EC2 spot builder in moto, real SSH host, real Nix, the sandbox SD expression),
#   3. prints where the image is,
#   4. checks that `sandboxctl resources --json` lists nothing,
#   5. brings the sandbox down again if (and only if) it started it.
#
# The instance is NIXFORGE_SANDBOX_INSTANCE (default 0). Extra arguments are passed to
# ansible-playbook (for example -e nixforge_build_id=my-demo or -v).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SANDBOXCTL="$REPO/tests/sandbox/sandboxctl"
export NIXFORGE_SANDBOX_INSTANCE="${NIXFORGE_SANDBOX_INSTANCE:-0}"
# Same settings as the Makefile exports, so that the script also runs on its own.
export ANSIBLE_CONFIG="$REPO/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$REPO/.build/collections"
export ANSIBLE_HOME="$REPO/.build/ansible-home"
export ANSIBLE_LOCAL_TEMP="$REPO/.build/ansible-home/tmp"
# Short whatever the checkout's path: a Unix socket path may not exceed 108 bytes.
ANSIBLE_SSH_CONTROL_PATH_DIR="/tmp/nixforge-cp-$(printf %s "$REPO" | sha1sum | cut -c1-12)"
export ANSIBLE_SSH_CONTROL_PATH_DIR
export PATH="$REPO/.venv/bin:$PATH"

started=0
cleanup() {
  local rc=$?
  if [ "$started" = 1 ]; then
    echo "== bringing the sandbox down (this script started it)"
    make --no-print-directory -C "$REPO" sandbox-down || rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT

if "$SANDBOXCTL" env >/dev/null 2>&1; then
  echo "== sandbox instance $NIXFORGE_SANDBOX_INSTANCE is already up; using it"
else
  echo "== starting sandbox instance $NIXFORGE_SANDBOX_INSTANCE"
  started=1
  make --no-print-directory -C "$REPO" sandbox-up
fi
# Endpoints and credentials of the sandbox (AWS_ENDPOINT_URL, REQUESTS_CA_BUNDLE, ...).
eval "$("$SANDBOXCTL" env)"

build_id="demo-$(date -u +%Y%m%d-%H%M%S)"
log="$REPO/.build/demo-$build_id.log"
mkdir -p "$REPO/.build" "$REPO/artifacts"
echo "== building (build id $build_id; full log in ${log#"$REPO"/})"
set +e
ansible-playbook -i inventories/sandbox playbooks/build-sd-aarch64.yml \
  -e nixforge_build_id="$build_id" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

echo "== what is left in the sandbox's clouds"
leftovers="$("$SANDBOXCTL" resources --json)"
echo "$leftovers"
count="$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["resources"] if isinstance(d, dict) else d))' <<<"$leftovers")"

if [ "$rc" -ne 0 ]; then
  echo "== the build failed (exit $rc); see the message above" >&2
  exit "$rc"
fi
image="$(find "$REPO/artifacts/$build_id" -maxdepth 1 -type f -name '*.img.zst' | head -n 1)"
if [ -z "$image" ]; then
  echo "== the playbook succeeded but no .img.zst is in artifacts/$build_id" >&2
  exit 1
fi
if [ "$count" -ne 0 ]; then
  echo "== $count resource(s) left in the sandbox: that is a leak" >&2
  exit 1
fi
echo
echo "== image: ${image#"$REPO"/} ($(stat -c %s "$image") bytes, sha256 $(sha256sum "$image" | cut -d' ' -f1))"
echo "== nothing left in the sandbox's clouds"
