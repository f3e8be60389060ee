#!/usr/bin/env bash
# make demo: both pipelines end to end in the local sandbox cloud, one after the other.
#
#   1. brings the sandbox up (make sandbox-up) unless it is already running,
#   2. runs playbooks/build-sd-aarch64.yml against inventories/sandbox
#      (EC2 spot builder in moto, real SSH host, real Nix, the sandbox SD expression)
#      and prints where the image is,
#   3. runs playbooks/build-do-image.yml (EC2 C8i/M8i builder with nested virtualization,
#      checked in its summary, the sandbox's tiny
#      qcow2.gz, upload to the sandbox's B2, import into its DigitalOcean, which fetches
#      the URL and inspects the bytes) and prints the image,
#   4. deletes that DigitalOcean image (the DO pipeline's product: a real user keeps it),
#   5. checks that `sandboxctl resources --json` lists nothing,
#   6. brings the sandbox down again if (and only if) it started it.
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

stamp="$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$REPO/.build" "$REPO/artifacts"

# run_pipeline PLAYBOOK BUILD_ID [ansible-playbook args...]: 0 or the playbook's exit code
run_pipeline() {
  local playbook="$1" build_id="$2" log
  shift 2
  log="$REPO/.build/demo-$build_id.log"
  echo "== $playbook (build id $build_id; full log in ${log#"$REPO"/})"
  set +e
  ansible-playbook -i inventories/sandbox "playbooks/$playbook" -e nixforge_build_id="$build_id" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}

leak_count() {
  "$SANDBOXCTL" resources --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["resources"] if isinstance(d, dict) else d))'
}

sd_id="demo-sd-$stamp"
rc=0
run_pipeline build-sd-aarch64.yml "$sd_id" "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "== the SD pipeline failed (exit $rc); see the message above" >&2
  "$SANDBOXCTL" resources --json
  exit "$rc"
fi
sd_image="$(find "$REPO/artifacts/$sd_id" -maxdepth 1 -type f -name '*.img.zst' | head -n 1)"
if [ -z "$sd_image" ]; then
  echo "== the SD playbook succeeded but no .img.zst is in artifacts/$sd_id" >&2
  exit 1
fi

do_id="demo-do-$stamp"
run_pipeline build-do-image.yml "$do_id" "$@" || rc=$?
# the DigitalOcean pipeline's default builder: KVM through EC2's nested virtualization
# (whitespace folded: the YAML callback may wrap the Builder line)
if [ "$rc" -eq 0 ] && ! tr -s ' \n' '  ' <"$REPO/.build/demo-$do_id.log" | grep -q "KVM: nested virtualization"; then
  echo "== the DigitalOcean pipeline did not build on a nested-virtualization builder (see its Builder line)" >&2
  rc=1
fi
image_json="$("$SANDBOXCTL" resources --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
items = d["resources"] if isinstance(d, dict) else d
print(json.dumps([r for r in items if r.get("provider") == "digitalocean" and sys.argv[1] in json.dumps(r)]))
' "$do_id")"
echo "== the DigitalOcean pipeline's product (what the sandbox's DigitalOcean holds of build $do_id):"
echo "$image_json"

# The last step: a real user keeps this image; the demo removes it so that the sandbox
# ends empty. Same module, state=absent by build id.
echo "== deleting the demo's DigitalOcean image"
ansible localhost -i inventories/sandbox -m nixforge.images.do_custom_image \
  -a "state=absent name=nixos-$do_id build_id=$do_id" >/dev/null || rc=1

echo "== what is left in the sandbox's clouds"
"$SANDBOXCTL" resources --json
count="$(leak_count)"

if [ "$rc" -ne 0 ]; then
  echo "== the DigitalOcean pipeline failed (exit $rc); see the message above" >&2
  exit "$rc"
fi
if [ "$count" -ne 0 ]; then
  echo "== $count resource(s) left in the sandbox: that is a leak" >&2
  exit 1
fi
echo
echo "== SD image: ${sd_image#"$REPO"/} ($(stat -c %s "$sd_image") bytes, sha256 $(sha256sum "$sd_image" | cut -d' ' -f1))"
echo "== DigitalOcean image: $(python3 -c 'import json,sys; print(", ".join("%s %s" % (r.get("type"), r.get("id")) for r in json.loads(sys.argv[1])))' "$image_json") (deleted again by the demo)"
echo "== nothing left in the sandbox's clouds"
