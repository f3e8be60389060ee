"""playbooks/build-do-image.yml end to end in the sandbox: a builder (Metal, EC2 or an
existing host) with real SSH and real Nix, the sandbox DO expression (a real tiny
qcow2 inside gzip), the upload to the sandbox's B2, the import by the sandbox's
DigitalOcean (which fetches the URL and inspects the bytes), teardown.

Cases are batched so that the suite stays short: one run checks the whole result (with the
boot check, on by default: the image boots, test_boot_check.py has the image that does not),
-vvvv secrets and then a re-run; one run checks the remote-build mode under faults of all
three clouds; one a refused image; the bad-input cases are cheap (they stop before
anything is created).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pipeline import (
    BIN,
    INVENTORY,
    ROOT,
    account_keys,
    boot_host,
    control,
    delete_host,
    new_id,
    playbook_env,
    resources,
    resources_of,
    run_playbook,
    sandbox_env,
    set_faults,
    snapshot,
)
from _record import recording, records, result_of
from nfsandbox.hosts.rootfs import image_debs

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

PLAYBOOK = ROOT / "playbooks" / "build-do-image.yml"
MKIMAGE = ROOT / "roles" / "nixos_image" / "files" / "images" / "sandbox" / "mkimage.py"
# The building runs use both kinds of builder: Metal (as in the seed; its token is then
# in play for the -vvvv check, and its API takes the builder-provider faults) and the
# default EC2 builder, a C8i with nested virtualization (the refused image).
BUILDER = "metal"
SUMMARY_KEYS = ("Image id", "Regions", "Size", "sha256", "File", "Builder", "Built on", "Timings", "Cost (est)")

# A variant of the sandbox expression whose nixos.qcow2.gz holds a tar archive: a valid
# gzip, but not a disk image DigitalOcean can import.
REFUSED_FLAKE = r"""
{
  description = "a DO image in the wrong format (a tar inside the gzip)";
  outputs = { self }: {
    nixosConfigurations.digital-ocean.config.system.build.digitalOceanImage = builtins.derivation {
      name = "digital-ocean-image";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "exec python3 ${./mktar.py} \"$out\"" ];
      PATH = "/usr/bin:/bin";
    };
  };
}
"""
REFUSED_BUILDER = r"""
import gzip, io, os, sys, tarfile
out = sys.argv[1]
os.makedirs(out)
data = b"nixos disk image, but archived\n" * 4096
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    info = tarfile.TarInfo("nixos.qcow2")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
with open(os.path.join(out, "nixos.qcow2.gz"), "wb") as fh:
    fh.write(gzip.compress(buf.getvalue(), mtime=0))
"""


@pytest.fixture(scope="module")
def env(sandbox_instance: object) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None
    missing = [
        k for k in ("B2_APPLICATION_KEY", "NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET", "DIGITALOCEAN_TOKEN") if not out.get(k)
    ]
    assert not missing, f"the sandbox publishes no {', '.join(missing)}: are its B2 and DigitalOcean emulators running?"
    return out


@pytest.fixture(autouse=True)
def _no_faults(env: dict[str, str]) -> Iterator[None]:
    for provider in ("ec2", "metal", "digitalocean", "b2"):
        set_faults(env, provider, {})
    yield
    for provider in ("ec2", "metal", "digitalocean", "b2"):
        set_faults(env, provider, {})


def mkimage_sha256(directory: Path, module_dir: Path | None = None) -> str:
    """What the sandbox expression produces (deterministic), computed here with mkimage.py
    from the Debian packages the builder hosts carry."""
    out = directory / "out"
    debs = {"NIXFORGE_SANDBOX_DEBS": str(image_debs())}
    subprocess.run(
        [sys.executable, str(MKIMAGE), "do", str(out), str(module_dir or "")], check=True, env={**os.environ, **debs}
    )
    return hashlib.sha256((out / "nixos.qcow2.gz").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def expected_sha256(tmp_path_factory: pytest.TempPathFactory) -> str:
    return mkimage_sha256(tmp_path_factory.mktemp("expected"))


def run(
    env: dict[str, str], tmp_path: Path, build_id: str, *args: str, run_env: dict | None = None, **extra: Any
) -> subprocess.CompletedProcess:
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        **extra,
    }
    return run_playbook(PLAYBOOK, run_env or playbook_env(env), variables, *args)


def flat(proc: subprocess.CompletedProcess) -> str:
    """stdout with every run of whitespace as one space (the YAML callback folds long lines)."""
    return " ".join(proc.stdout.split())


def summary(stdout: str) -> dict[str, str]:
    """The summary's lines, `Key:   value`, as printed by the last task."""
    out: dict[str, str] = {}
    tail = stdout[stdout.rfind("TASK [Summary") :]
    joined = tail.replace("\n        ", " ")  # YAML callback folds long items
    for key in (*SUMMARY_KEYS, "Build id"):
        for line in joined.splitlines():
            text = line.strip().lstrip("-").strip().strip("'\"")
            if text.startswith(key + ":"):
                out[key] = text[len(key) + 1 :].strip().strip("'\"")
                break
    return out


def do_images(build_id: str) -> list[dict[str, Any]]:
    return [r for r in resources() if r["provider"] == "digitalocean" and build_id in json.dumps(r)]


def b2_leftovers(build_id: str) -> list[dict[str, Any]]:
    return [r for r in resources() if r["provider"] == "b2" and build_id in json.dumps(r)]


def delete_images(env: dict[str, str], build_id: str) -> None:
    """What a user does with the product when done: the module, state=absent by build id."""
    proc = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-i",
            str(INVENTORY),
            "-m",
            "nixforge.images.do_custom_image",
            "-a",
            f"state=absent build_id={build_id}",
        ],
        capture_output=True,
        text=True,
        env=playbook_env(env),
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def served(env: dict[str, str], provider: str) -> dict[str, Any]:
    return control(env, "GET", f"/faults/{provider}")["faults"]["served"]


def check_artifact(s: dict[str, str], tmp_path: Path, expected_sha256: str) -> Path:
    image = Path(s["File"])
    assert image.parent == tmp_path / "artifacts" and image.name == "nixos.qcow2.gz"
    data = image.read_bytes()
    assert hashlib.sha256(data).hexdigest() == s["sha256"] == expected_sha256
    assert gzip.decompress(data)[:4] == b"QFI\xfb"  # a qcow2 inside the gzip
    return image


def check_published(build_id: str, sha256: str, regions: set[str], s: dict[str, str]) -> dict[str, Any]:
    """One available image, fetched by DigitalOcean with exactly the artifact's bytes, in
    every region; nothing else of the build anywhere (B2 object, builder, keys)."""
    images = do_images(build_id)
    assert len(images) == 1, images
    image = images[0]
    assert image["status"] == "available"
    assert image["sha256"] == sha256  # as the DO emulator fetched it from B2
    assert (image["format"], image["compression"]) == ("qcow2", "gzip")
    assert set(image["regions"]) == regions
    assert f"nixforge-build-id:{build_id}" in image["tags"]
    assert str(image["id"]) in s["Image id"] and "available" in s["Image id"]
    assert set(s["Regions"].split(", ")) == regions
    assert b2_leftovers(build_id) == []
    assert [r for r in resources_of(build_id) if r["provider"] != "digitalocean"] == []
    return image


# Every token the B2 emulator issues (account, upload URL, download authorization) has B2's
# shape: `4_<key id>_<random>` (`3_...` for a download authorization).
B2_ISSUED_TOKEN = re.compile(r"\b[34]_[0-9a-f]{12,}_[A-Za-z0-9_-]{30,}")
SECRET_VARIABLES = ("B2_APPLICATION_KEY", "DIGITALOCEAN_TOKEN", "METAL_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY")


def secret_env(env: dict[str, str]) -> dict[str, str]:
    """The run's environment with AWS credentials of its own (moto takes any): distinctive
    values that a leak would show, unlike the sandbox's `testing`."""
    return playbook_env(
        env,
        AWS_ACCESS_KEY_ID="AKIA" + secrets.token_hex(8).upper(),
        AWS_SECRET_ACCESS_KEY="nixforge-aws-" + secrets.token_urlsafe(24),
    )


def assert_no_secret(run_env: dict[str, str], output: str) -> None:
    """No credential of the run and no token the B2 emulator issued appears in `output`."""
    for name in SECRET_VARIABLES:
        assert run_env[name] not in output, f"{name} leaked at -vvvv"
    leaked = B2_ISSUED_TOKEN.findall(output)
    assert not leaked, f"a B2 token leaked at -vvvv: {leaked[0][:12]}..."
    assert "PRIVATE KEY-----" not in output


def b2_token(env: dict[str, str]) -> str:
    """An account token, issued by the sandbox's B2 the way the modules get theirs."""
    import base64
    import ssl
    import urllib.request

    request = urllib.request.Request(env["B2_API_URL"].rstrip("/") + "/b2api/v2/b2_authorize_account")  # noqa: S310
    basic = base64.b64encode(f"{env['B2_APPLICATION_KEY_ID']}:{env['B2_APPLICATION_KEY']}".encode()).decode()
    request.add_header("Authorization", "Basic " + basic)
    context = ssl.create_default_context(cafile=env.get("REQUESTS_CA_BUNDLE"))
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310 - loopback emulator
        return json.loads(answer.read())["authorizationToken"]


def test_the_no_secret_check_has_teeth(env: dict[str, str]) -> None:
    token = b2_token(env)
    assert B2_ISSUED_TOKEN.fullmatch(token), token[:12]
    with pytest.raises(AssertionError, match="B2 token leaked"):
        assert_no_secret(secret_env(env), f"ok: {{'authorizationToken': '{token}'}}")


BOOT_TASK = "Boot a droplet from the image"


def check_boot(env: dict[str, str], build_id: str, proc: subprocess.CompletedProcess, boot: dict[str, Any]) -> None:
    """The boot check of a whole run (on by default): the built image booted in the import
    region (nyc3; the other regions only receive transfers), the controller logged in and read
    the image's marker; the summary shows the boot time, the marker and the cost; the droplet
    and its account key are gone and only the image (the product) is left."""
    assert boot["reached"] == "login" and 0 < boot["boot_seconds"] <= 600  # do_image_publish_boot_timeout
    assert boot["output"].splitlines()[0] == "nixforge sandbox image (do)"  # the built image's marker
    assert boot["cost"] == 0.01 and boot["billed_seconds"] >= 60 and boot["price_per_hour"] > 0
    assert boot["droplet"]["size"] == "s-1vcpu-512mb-10gb"  # the cheapest that holds the image
    assert boot["droplet"]["region"] == "nyc3"
    assert [d["id"] for d in boot["removed"]["droplets"]] == [boot["droplet"]["id"]]
    assert [k["name"] for k in boot["removed"]["ssh_keys"]] == [boot["ssh_key"]["name"]]
    assert boot["ssh_key"]["name"].startswith("nixforge-%s-" % build_id)
    text = " ".join(proc.stdout.split())
    # boot_seconds counts from the droplet being active; create to SSH is both together
    assert boot["create_seconds"] is not None and boot["create_seconds"] >= 0
    total, booted = round(boot["boot_seconds"] + boot["create_seconds"], 1), round(boot["boot_seconds"], 1)
    line = "Boot check: %s s from create to SSH (booted in %s s once active) on s-1vcpu-512mb-10gb in nyc3"
    assert line % (total, booted) in text, text[-3000:]
    assert "cost 0.0100 USD" in text and "Boot out: nixforge sandbox image (do)" in text
    left = resources_of(build_id)
    assert [r["type"] for r in left] == ["do_image"], left  # only the product
    assert account_keys(env, build_id) == []


def test_end_to_end_metal_vvvv_then_rerun(env: dict[str, str], tmp_path: Path, expected_sha256: str) -> None:
    """Metal builder (as in the seed), build on the builder, three regions, -vvvv: the
    image is available everywhere with the builder's bytes, it booted once (check_boot), nothing
    else is left, no secret is printed (credentials, and every token B2 issued: account, upload). A re-run
    with the same build id builds and imports nothing."""
    build_id = new_id("t-do")
    run_env = secret_env(env)
    record = tmp_path / "run.jsonl"
    try:
        proc = run(
            env,
            tmp_path,
            build_id,
            "-vvvv",
            run_env=recording(run_env, record),
            builder_host_provider="metal",
            do_image_publish_regions=["sfo3", "ams3"],
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
        check_boot(env, build_id, proc, result_of(records(record), BOOT_TASK, "ok")["result"])
        s = summary(proc.stdout)
        assert set(SUMMARY_KEYS) <= set(s), s
        # the default path: the builder uploaded the image to B2 itself, the controller has no copy
        assert s["File"].startswith("none on the controller: the builder uploaded it to B2"), s["File"]
        assert s["sha256"] == expected_sha256
        assert not (tmp_path / "artifacts" / "nixos.qcow2.gz").exists()
        image = check_published(build_id, expected_sha256, {"nyc3", "sfo3", "ams3"}, s)
        assert "already imported" not in s["Image id"]
        assert s["Builder"].startswith("c3.small.x86 (metal")
        assert "USD" in s["Cost (est)"]
        # the builder got upload URLs and their tokens, the controller its account token: none printed
        assert_no_secret(run_env, output)
        assert not (tmp_path / "state").exists()
        assert "Upload the image from the builder straight to B2" in output
        # the controller's own upload was skipped
        skipped = r"Upload the image to B2 under an unguessable name\] \**\n(task path: [^\n]*\n)?skipping"
        assert re.search(skipped, output)

        again = run(env, tmp_path, build_id, builder_host_provider="metal", do_image_publish_regions=["sfo3", "ams3"])
        assert again.returncode == 0, again.stdout[-8000:]
        assert "nothing to build, upload or import" in flat(again)
        assert "already imported by an earlier run: nothing imported" in flat(again), again.stdout[-6000:]
        assert [i["id"] for i in do_images(build_id)] == [image["id"]]
        assert "Builder: none (nothing to build)" in flat(again)  # no builder this time
    finally:
        delete_images(env, build_id)
    assert resources_of(build_id) == []


def test_authorized_url_mode_fails_before_anything_saying_so_and_leaks_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    """`url_mode: authorized` gives a URL with a query string, which DigitalOcean refuses:
    the preflight says so before a builder is rented or anything uploaded, at -vvvv without a
    secret. The same URL made by b2_object (as the role does, `no_log`) leaks no download
    authorization either."""
    build_id = new_id("t-doauth")
    run_env = secret_env(env)
    proc = run(env, tmp_path, build_id, "-vvvv", run_env=run_env, do_image_publish_url_mode="authorized")
    assert proc.returncode != 0
    text = flat(proc)
    assert "do_image_publish_url_mode: " in text and "query string" in text, text[-5000:]
    assert "TASK [nixforge.images.builder_host : " not in proc.stdout
    assert resources_of(build_id) == [] and b2_leftovers(build_id) == []
    assert_no_secret(run_env, proc.stdout + proc.stderr)

    image = tmp_path / "nixos.qcow2.gz"
    image.write_bytes(gzip.compress(b"\0" * 4096))
    upload = {"bucket": env["NIXFORGE_SANDBOX_B2_PRIVATE_BUCKET"], "build_id": build_id, "ttl": "1h"}
    play = tmp_path / "authorized.yml"
    play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"nixforge.images.b2_object": {**upload, "src": str(image), "url_mode": "authorized"},
         "no_log": True, "register": "uploaded"},
        {"ansible.builtin.assert": {"that": ["'Authorization=' in uploaded.url"], "quiet": True}},
        {"nixforge.images.b2_object": {**upload, "state": "absent"}},
    ]}]))  # fmt: skip
    # An authorized URL of the private bucket needs shareFiles there, which the pipelines'
    # least key lacks by design: this half runs with the sandbox's master key.
    share_env = {
        **run_env,
        "B2_APPLICATION_KEY_ID": env["NIXFORGE_SANDBOX_B2_MASTER_KEY_ID"],
        "B2_APPLICATION_KEY": env["NIXFORGE_SANDBOX_B2_MASTER_KEY"],
    }
    done = run_playbook(play, share_env, None, "-vvvv")
    assert done.returncode == 0, done.stdout[-5000:]
    assert_no_secret(share_env, done.stdout + done.stderr)
    assert b2_leftovers(build_id) == []


def test_remote_build_mode_under_faults(env: dict[str, str], tmp_path: Path) -> None:
    """The controller's Nix builds through a Metal builder (--max-jobs 0; the output is
    checked to be in the builder's store) while B2 and DigitalOcean answer 20% of the calls
    with 429/5xx and the builder's provider throttles and fails some calls (its knobs are
    counts): the same artifact is published."""
    build_id = new_id("t-dorm")
    # A module of its own makes a derivation no store has yet, so it must really be built.
    module = tmp_path / "module" / "default.nix"
    module.parent.mkdir()
    module.write_text('{ ... }: { networking.hostName = "remote-%s"; }\n' % secrets.token_hex(4))
    expected_sha256 = mkimage_sha256(tmp_path, module.parent)
    set_faults(
        env,
        "digitalocean",
        {
            "throttle_rate": 0.1,
            "server_error_rate": 0.05,
            "unavailable_rate": 0.05,
            "seed": 3,
            "server_error": 1,
            "throttle": 1,
        },
    )
    # Our modules' calls only: DigitalOcean's own download of the image is not retried by
    # DigitalOcean (a failed fetch fails the import, as on the real service).
    no_download_faults = {"rate_429": 0, "rate_503": 0}
    set_faults(
        env,
        "b2",
        {
            "rate_429": 0.1,
            "rate_503": 0.1,
            "throttle": 1,
            "service_unavailable": 1,
            "retry_after": 1,
            "seed": 5,
            "calls": {"b2_download_file_by_name": no_download_faults, "b2_download_file_by_id": no_download_faults},
        },
    )
    set_faults(env, "metal", {"throttle": 3, "server_error": 2, "retry_after": 1})
    try:
        proc = run(
            env,
            tmp_path,
            build_id,
            nixforge_build_mode="remote",
            builder_host_provider=BUILDER,
            nixos_image_module=str(module),
        )
        assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
        s = summary(proc.stdout)
        check_artifact(s, tmp_path, expected_sha256)
        check_published(build_id, expected_sha256, {"nyc3"}, s)
        # the output is in the builder's store: the builder built it (the controller has no build slots)
        address = s["Built on"].split()[0]
        assert s["Built on"] == f"{address} (remote build from the controller)"
        assert address.startswith("10.213.")
        # every fault kind asked for fired
        do_served, b2_served, metal_served = served(env, "digitalocean"), served(env, "b2"), served(env, "metal")
        assert do_served["429"] > 0 and do_served["500"] + do_served["503"] > 0, do_served
        assert b2_served["429"] > 0 and b2_served["503"] > 0, b2_served
        assert metal_served.get("throttle") == 3 and metal_served.get("server_error") == 2, metal_served
    finally:
        for provider in ("metal", "digitalocean", "b2"):
            set_faults(env, provider, {})
        delete_images(env, build_id)
    assert resources_of(build_id) == []


def test_image_digitalocean_refuses_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    """An image DigitalOcean would refuse (a tar inside the gzip) fails on the controller with
    the reason, before anything is uploaded to B2 or imported; nothing is left."""
    build_id = new_id("t-dorf")
    flake = tmp_path / "refused-flake"
    flake.mkdir()
    (flake / "flake.nix").write_text(REFUSED_FLAKE)
    (flake / "mktar.py").write_text(REFUSED_BUILDER)
    proc = run(env, tmp_path, build_id, nixos_image_flake=str(flake))  # default builder: EC2 c8i.2xlarge, nested virt.
    assert proc.returncode != 0
    text = flat(proc)
    assert f"Build {build_id} failed; the builder and everything the build created were removed" in text, text[-6000:]
    # the controller reads the file before uploading it: a tar archive, which DigitalOcean refuses
    assert "the image is a tar archive" in text, text[-6000:]
    assert "Upload the image to B2" not in proc.stdout  # nothing went to B2, nothing was imported
    assert "Import it into DigitalOcean" not in proc.stdout
    assert do_images(build_id) == [] and b2_leftovers(build_id) == []
    assert resources_of(build_id) == []


BAD_INPUT = {
    "region": ({"do_image_publish_region": "mars1"}, {}, "do_image_publish_region"),
    "regions": ({"do_image_publish_regions": ["nyc2"]}, {}, "do_image_publish_regions"),
    "distribution": ({"do_image_publish_distribution": "NixOS"}, {}, "do_image_publish_distribution"),
    "no-bucket": ({"do_image_publish_bucket": ""}, {}, "do_image_publish_bucket"),
    "unknown-bucket": ({"do_image_publish_bucket": "nixforge-no-such-bucket"}, {}, "do_image_publish_bucket"),
    "private-bucket": ({"do_image_publish_bucket": "@private"}, {}, "do_image_publish_url_mode"),
    "b2-credentials": ({}, {"B2_APPLICATION_KEY_ID": None, "B2_APPLICATION_KEY": None}, "B2_APPLICATION_KEY_ID"),
    "do-token": ({}, {"DIGITALOCEAN_TOKEN": None, "DO_API_TOKEN": None}, "DIGITALOCEAN_TOKEN"),
    "ec2-no-kvm": (
        {"nixforge_require_kvm": True, "builder_host_ec2_instance_types": ["c5.metal", "c6i.2xlarge"]},
        {},
        "builder_host_ec2_instance_types: c6i.2xlarge",
    ),
    "metal-no-kvm": (
        {
            "nixforge_require_kvm": True,
            "builder_host_provider": "metal",
            "builder_host_metal_plan": "s3.xlarge.x86",
        },
        {},
        "has no hardware virtualisation (KVM)",
    ),
    "build-mode": ({"nixforge_build_mode": "local"}, {}, "nixforge_build_mode"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_before_creating(env: dict[str, str], tmp_path: Path, case: str) -> None:
    extra, env_change, named = BAD_INPUT[case]
    if extra.get("do_image_publish_bucket") == "@private":
        extra = {**extra, "do_image_publish_bucket": env["NIXFORGE_SANDBOX_B2_PRIVATE_BUCKET"]}
        # a key that sees the private bucket (the pipelines' key is restricted to the public one)
        env_change = {
            "B2_APPLICATION_KEY_ID": env["NIXFORGE_SANDBOX_B2_REAPER_KEY_ID"],
            "B2_APPLICATION_KEY": env["NIXFORGE_SANDBOX_B2_REAPER_KEY"],
        }
    build_id = new_id("t-dobad")
    run_env = playbook_env(env)
    for key, value in env_change.items():
        run_env.pop(key, None) if value is None else run_env.update({key: value})
    proc = run(env, tmp_path, build_id, run_env=run_env, **extra)
    assert proc.returncode != 0
    # the name itself, not a longer one containing it (do_image_publish_region(s))
    assert re.search(r"(?<!\w)%s(?!\w)" % re.escape(named), flat(proc)), proc.stdout[-5000:]
    assert resources_of(build_id) == []
    assert not (tmp_path / "artifacts").exists()
    if case == "metal-no-kvm":
        # metal_device refuses the plan while checking its input, before ordering anything
        assert "Parameter 'plan' failed" in flat(proc)
    else:
        # stopped before builder_host was even called
        assert "TASK [nixforge.images.builder_host : " not in proc.stdout


def test_existing_host_without_kvm_is_refused_and_left_as_it_was(env: dict[str, str], tmp_path: Path) -> None:
    """ssh provider: /dev/kvm can only be looked for after logging in; the refusal
    undoes everything the build did on the host."""
    host = boot_host(env, tmp_path / "host-keys", owner="test-do-no-kvm")
    try:
        before = snapshot(host)
        build_id = new_id("t-dossh")
        proc = run(
            env,
            tmp_path,
            build_id,
            nixforge_require_kvm=True,
            builder_host_provider="ssh",
            builder_host_ssh_host=host.ip,
            builder_host_ssh_private_key_file=str(host.key),
            builder_host_ssh_host_key=host.host_public_key,
        )
        assert proc.returncode != 0
        text = flat(proc)
        assert f"Build {build_id}: provisioning the builder failed" in text, proc.stdout[-5000:]
        assert "nixforge_require_kvm: the builder" in text and "has no /dev/kvm" in text
        assert snapshot(host) == before
        assert resources_of(build_id) == []
    finally:
        delete_host(env, host)
