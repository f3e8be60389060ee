"""B2 upload benchmark: the b2_object module against a plain single-stream upload, in the same run.

    python -m benchmarks.b2_upload [--size-mib 2048] [--rounds 1] [--part-size 100MB] [--threads 4]
                                   [--upload-rate MB/s] [--check]
    (also run by `make benchmark`, after the fetch benchmark: on loopback, then with
    --upload-rate 100)

Uses the B2 emulator of sandbox instance NIXFORGE_SANDBOX_INSTANCE (brought up if it is
down, and down again if this run started it). Writes a file of random bytes, then uploads
it, in alternating order each round:

- with the module: `plugins/modules/b2_object.py` run as its own process, the way
  Ansible runs a module (arguments in a JSON file); its wall time (Python start and
  imports included) and its peak RSS (`wait4` rusage of that process) are measured.
  Three times:
  `module`: as in the DigitalOcean pipeline. The file carries the verified-sha256 record
    that fetch_artifact leaves on what it fetched (it hashed the bytes while they
    streamed in; here the benchmark hashed them while writing them and records the same
    way), and `sha256` is given as do_image_publish gives it: the module hashes nothing
    but B2's per-part sha1;
  `module-given`: `sha256` given, no record (a file from elsewhere): checked while uploading;
  `module-prepass`: neither: the module reads the file once before uploading, to compute it;
- with one plain stream: `b2_get_upload_url` then a single `b2_upload_file` POST of the
  same bytes, the sha1 computed while sending and appended (`hex_digits_at_end`), as a
  simple client would do it. No pre-pass, one connection.
- with Backblaze's own command line tool (`b2 file upload`, pip package `b2`, pinned in
  tests/constraints.txt): the same thread count (`--threads`) and part size
  (`--min-part-size`), the realm given as `B2_ENVIRONMENT`, the same key from the
  environment; wall time, peak RSS and CPU measured like the module's. The tool reads the
  whole file once for its sha1 before it uploads a large file (b2sdk's `large_file_sha1`).

Both land in the sandbox's public bucket; each upload is checked (size, sha256 of the
bytes downloaded back for the module) and deleted. The ratio is single-stream seconds /
module seconds: above 1 the module is faster; likewise `b2` CLI seconds / module seconds.
Targets: both ratios >= 1.0, peak RSS < 200 MB.
Not a test: the machine's load moves the numbers; only --check turns a missed target into
a failing exit code.

Each upload also reports the CPU seconds of the client and of the emulator (the sandbox
daemon), and how busy they kept the machine's cores: on loopback both ends SHA-1 every
byte (B2 requires it), so a fast upload is CPU-bound, and when one stream already keeps
every core busy, parallel parts have nothing left to gain.

`--upload-rate` sets the B2 emulator's `upload_rate` knob for the run: each upload
request is received at most at that many MB/s, as one request to B2 over a real network
is limited (the regime parallel parts are for). It applies to both uploads alike.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))
sys.path.insert(0, str(ROOT / ".build" / "collections"))

from ansible_collections.nixforge.images.plugins.module_utils._base import _checksum_record as checksum_record  # noqa: E402
from nfsandbox import procs  # noqa: E402
from nfsandbox.testing import VENV_BIN  # noqa: E402

from benchmarks._sandbox import sandbox_up  # noqa: E402

MODULE = ROOT / "plugins" / "modules" / "b2_object.py"
COLLECTIONS = ROOT / ".build" / "collections"
BLOCK = 1024 * 1024
RSS_TARGET_MB = 200.0
RATIO_TARGET = 1.0


def log(message: str) -> None:
    print(message, flush=True)


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            block = os.urandom(min(BLOCK * 8, left))
            handle.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def ssl_context(env: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=env.get("REQUESTS_CA_BUNDLE") or None)


def b2_json(env: dict[str, str], url: str, token: str | None, body: Any = None, method: str = "POST") -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - the sandbox's B2
    if token is not None:
        request.add_header("Authorization", token)
    context = ssl_context(env) if url.startswith("https") else None
    with urllib.request.urlopen(request, timeout=120, context=context) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


class RawB2:
    """The few native API calls the single-stream upload needs, with urllib/http.client only."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        basic = b64encode(("%s:%s" % (env["B2_APPLICATION_KEY_ID"], env["B2_APPLICATION_KEY"])).encode()).decode()
        auth = b2_json(
            env, env["B2_API_URL"].rstrip("/") + "/b2api/v3/b2_authorize_account", "Basic " + basic, method="GET"
        )
        self.token = auth["authorizationToken"]
        storage = auth["apiInfo"]["storageApi"]
        self.api_url = storage["apiUrl"]
        self.download_url = storage["downloadUrl"]
        self.account_id = auth["accountId"]

    def call(self, name: str, body: dict[str, Any]) -> Any:
        return b2_json(self.env, "%s/b2api/v3/%s" % (self.api_url, name), self.token, body)

    def bucket_id(self, bucket: str) -> str:
        found = self.call("b2_list_buckets", {"accountId": self.account_id, "bucketName": bucket})["buckets"]
        return found[0]["bucketId"]

    def upload_single_stream(self, bucket_id: str, path: Path, name: str) -> dict[str, Any]:
        """One POST of the whole file; sha1 computed while sending, appended at the end."""
        target = self.call("b2_get_upload_url", {"bucketId": bucket_id})
        url = urlsplit(target["uploadUrl"])
        size = path.stat().st_size
        if url.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                url.hostname, url.port, context=ssl_context(self.env), timeout=600
            )
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        conn.putrequest("POST", url.path + ("?" + url.query if url.query else ""))
        conn.putheader("Authorization", target["authorizationToken"])
        conn.putheader("X-Bz-File-Name", quote(name, safe="/"))
        conn.putheader("Content-Type", "b2/x-auto")
        conn.putheader("Content-Length", str(size + 40))
        conn.putheader("X-Bz-Content-Sha1", "hex_digits_at_end")
        conn.endheaders()
        sha1 = hashlib.sha1()  # noqa: S324 - B2's integrity checksum
        with open(path, "rb") as handle:
            while True:
                block = handle.read(BLOCK)
                if not block:
                    break
                sha1.update(block)
                conn.send(block)
        conn.send(sha1.hexdigest().encode())
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status != 200:
            raise SystemExit("single-stream upload failed: HTTP %d %s" % (response.status, body[:300]))
        return json.loads(body)

    def delete(self, file_id: str, name: str) -> None:
        self.call("b2_delete_file_version", {"fileId": file_id, "fileName": name})


def daemon_pid(inst: Any) -> int:
    """The sandbox daemon, which serves B2."""
    return next(int(r["pid"]) for r in procs.Records(inst.records_dir).live_pids() if r["name"] == "daemon")


def emulator_cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def module_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(COLLECTIONS) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_module(args: dict[str, Any], work: Path, env: dict[str, str]) -> tuple[dict[str, Any], float, float, float]:
    """Run b2_object as Ansible does (its own process, arguments in a file):
    (result, seconds, peak RSS MB, CPU seconds)."""
    args_file = work / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    out, err = work / "module.out", work / "module.err"
    started = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [str(VENV_BIN / "python"), str(MODULE), str(args_file)], stdout=stdout, stderr=stderr, env=env
        )
        status, usage = os.wait4(proc.pid, 0)[1:]
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        result = json.loads(out.read_text())
    except ValueError:
        raise SystemExit("b2_object printed no JSON:\n%s\n%s" % (out.read_text(), err.read_text())) from None
    if result.get("failed"):
        raise SystemExit("b2_object failed: %s" % result.get("msg"))
    return result, seconds, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB


def run_b2_cli(
    src: Path, bucket: str, name: str, args: argparse.Namespace, work: Path, env: dict[str, str]
) -> tuple[dict[str, Any], float, float, float]:
    """`b2 file upload` with the same threads and part size: (its JSON answer, seconds, peak RSS MB, CPU s)."""
    cli_env = dict(env, B2_ENVIRONMENT=env["B2_API_URL"], B2_ACCOUNT_INFO=str(work / "b2-account-info.sqlite"))
    part = str(parse_part_size(args.part_size))
    argv = [str(VENV_BIN / "b2"), "file", "upload", "--no-progress", "--threads", str(args.threads)]
    argv += ["--min-part-size", part, bucket, str(src), name]
    out, err = work / "b2cli.out", work / "b2cli.err"
    started = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=cli_env)
        status, usage = os.wait4(proc.pid, 0)[1:]
    seconds = time.monotonic() - started
    text = out.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("b2 file upload failed:\n%s\n%s" % (text[-2000:], err.read_text()[-2000:]))
    answer = json.loads(text[text.index("{") :])
    return answer, seconds, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def parse_part_size(text: str) -> int:
    """Bytes of ``100MB`` / ``64MiB`` / a plain number (b2_object's own parser)."""
    from ansible_collections.nixforge.images.plugins.module_utils._b2._client import parse_size

    return parse_size(text)


def download_sha256(url: str, env: dict[str, str]) -> str:
    digest = hashlib.sha256()
    context = ssl_context(env) if url.startswith("https") else None
    with urllib.request.urlopen(url, timeout=600, context=context) as response:  # noqa: S310 - sandbox B2
        while True:
            block = response.read(BLOCK)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="b2_object upload vs one plain stream")
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--part-size", default="100MB")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--upload-rate", type=float, default=0.0, help="MB/s at most per upload request (B2 knob upload_rate; 0: none)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        log("the benchmark needs the sandbox, which needs root")
        return 2
    up = contextlib.ExitStack()
    sandbox = up.enter_context(sandbox_up())
    work = Path(tempfile.mkdtemp(prefix="nfbench-b2-", dir="/var/tmp"))
    env = {**module_env(), **sandbox.env()}
    if "B2_API_URL" not in env:
        log("the sandbox has no B2 emulator (no B2_API_URL in `sandboxctl env`)")
        return 2
    bucket = env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"]
    build_id = "bench-b2-%d" % os.getpid()
    module_args = {
        "bucket": bucket,
        "src": str(work / "image.bin"),
        "build_id": build_id,
        "ttl": "2h",
        "part_size": args.part_size,
        "threads": args.threads,
    }
    cores = os.cpu_count() or 1
    daemon = daemon_pid(sandbox.instance)
    try:
        sandbox.set_faults("b2", {"upload_rate": args.upload_rate} if args.upload_rate else {})
        src = work / "image.bin"
        size = args.size_mib * 1024 * 1024
        log(f"writing {args.size_mib} MiB of random bytes to {src}")
        sha256 = write_random(src, size)
        raw = RawB2(env)
        bucket_id = raw.bucket_id(bucket)
        samples: dict[str, list[float]] = {
            "module": [], "module-given": [], "module-prepass": [], "single": [], "b2cli": []
        }  # fmt: skip
        cli_rss: list[float] = []
        rss: list[float] = []
        cpus: dict[str, list[float]] = {}
        emulator_cpus: dict[str, list[float]] = {}
        busies: dict[str, list[float]] = {}
        for round_no in range(args.rounds):
            order = ["single", "module", "b2cli", "module-given", "module-prepass"]
            for name in order if round_no % 2 == 0 else list(reversed(order)):
                subprocess.run(["sync"], check=True)
                server_before = emulator_cpu(daemon)
                if name.startswith("module"):
                    given = {"sha256": sha256} if name != "module-prepass" else {}
                    if name == "module":
                        checksum_record.record(str(src), sha256)
                    else:
                        checksum_record.forget(str(src))
                    result, seconds, peak, cpu = run_module({**module_args, **given}, work, env)
                    server = emulator_cpu(daemon) - server_before
                    obj = result["object"]
                    how = {"module": "record", "module-given": "upload", "module-prepass": "read"}[name]
                    if not result["uploaded"] or obj["size"] != size or obj["sha256"] != sha256:
                        raise SystemExit(f"unexpected module result: {obj}")
                    if result["sha256_checked"] != how:
                        raise SystemExit(f"{name}: the sha256 was established by {result['sha256_checked']}, not {how}")
                    if round_no == 0 and download_sha256(result["url"], env) != sha256:
                        raise SystemExit("the module's object does not download as the same bytes")
                    run_module({**module_args, "state": "absent"}, work, env)
                    rss.append(peak)
                    cpus.setdefault(name, []).append(round(cpu, 2))
                    extra = f"  CPU {cpu:6.2f} s  peak RSS {peak:6.1f} MB"
                elif name == "b2cli":
                    answer, seconds, peak, cpu = run_b2_cli(
                        src, bucket, f"nixforge/{build_id}/b2cli/image.bin", args, work, env
                    )
                    server = emulator_cpu(daemon) - server_before
                    if int(answer["size"]) != size:
                        raise SystemExit(f"unexpected b2 CLI result: {answer}")
                    raw.delete(answer["fileId"], answer["fileName"])
                    cli_rss.append(peak)
                    cpus.setdefault(name, []).append(round(cpu, 2))
                    extra = f"  CPU {cpu:6.2f} s  peak RSS {peak:6.1f} MB"
                else:
                    before = resource.getrusage(resource.RUSAGE_SELF)
                    started = time.monotonic()
                    uploaded = raw.upload_single_stream(bucket_id, src, f"nixforge/{build_id}/single/image.bin")
                    seconds = time.monotonic() - started
                    server = emulator_cpu(daemon) - server_before
                    if int(uploaded["contentLength"]) != size:
                        raise SystemExit(f"unexpected single-stream result: {uploaded}")
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                    raw.delete(uploaded["fileId"], uploaded["fileName"])
                    extra = f"  CPU {cpu:6.2f} s"
                samples[name].append(seconds)
                if name == "single":
                    cpus.setdefault(name, []).append(round(cpu, 2))
                emulator_cpus.setdefault(name, []).append(round(server, 2))
                busy = (cpu + server) / (cores * seconds)
                busies.setdefault(name, []).append(round(busy, 2))
                mib_s = args.size_mib / seconds
                log(
                    f"round {round_no + 1}: {name:14s} {seconds:7.2f} s  {mib_s:7.1f} MiB/s{extra}"
                    f"  emulator CPU {server:5.2f} s  cores busy {busy:4.0%}"
                )

        module_s = statistics.median(samples["module"])
        given_s = statistics.median(samples["module-given"])
        prepass_s = statistics.median(samples["module-prepass"])
        single_s = statistics.median(samples["single"])
        cli_s = statistics.median(samples["b2cli"])
        cli_ratio = cli_s / module_s
        ratio = single_s / module_s
        prepass_ratio = single_s / prepass_s
        peak = max(rss)
        report = {
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "part_size": args.part_size,
            "threads": args.threads,
            "module_seconds": samples["module"],
            "module_given_seconds": samples["module-given"],
            "module_prepass_seconds": samples["module-prepass"],
            "single_stream_seconds": samples["single"],
            "b2_cli_seconds": samples["b2cli"],
            "ratio_b2_cli_over_module": round(cli_ratio, 3),
            "b2_cli_peak_rss_mb": round(max(cli_rss), 1),
            "ratio_single_over_module": round(ratio, 3),
            "ratio_single_over_module_given": round(single_s / given_s, 3),
            "ratio_single_over_module_prepass": round(prepass_ratio, 3),
            "module_peak_rss_mb": round(peak, 1),
            "upload_rate_mb_s": args.upload_rate,
            "cpu_seconds": cpus,
            "emulator_cpu_seconds": emulator_cpus,
            "cores": cores,
            "cores_busy": busies,
            "load_average": os.getloadavg(),
        }
        log("")
        if args.upload_rate:
            log(f"each upload request limited to {args.upload_rate:g} MB/s (B2 emulator knob upload_rate)")
        else:
            log(
                f"loopback: the single stream kept the {cores} cores "
                f"{statistics.median(busies['single']):.0%} busy (client + emulator CPU / cores x wall)"
            )
        log(
            f"module (as in the pipeline: fetched file, sha256 recorded) {module_s:7.2f} s, "
            f"single stream {single_s:7.2f} s: {ratio:.2f}x "
            f"(target {RATIO_TARGET}x {'met' if ratio >= RATIO_TARGET else 'MISSED'})"
        )
        log(
            f"module {module_s:7.2f} s, b2 CLI (b2 file upload, {args.threads} threads, parts of {args.part_size}) "
            f"{cli_s:7.2f} s: {cli_ratio:.2f}x "
            f"(target {RATIO_TARGET}x {'met' if cli_ratio >= RATIO_TARGET else 'MISSED'}; "
            f"b2 CLI peak RSS {max(cli_rss):.1f} MB)"
        )
        log(f"module (sha256 given, checked while uploading) {given_s:7.2f} s: {single_s / given_s:.2f}x")
        log(f"module (sha256 pre-pass) {prepass_s:7.2f} s: {prepass_ratio:.2f}x of the single stream")
        log(
            f"module peak RSS {peak:.1f} MB (target < {RSS_TARGET_MB:.0f} MB "
            f"{'met' if peak < RSS_TARGET_MB else 'MISSED'})"
        )
        log("BENCHMARK " + json.dumps(report))
        missed = ratio < RATIO_TARGET or cli_ratio < RATIO_TARGET or peak >= RSS_TARGET_MB
        return 1 if args.check and missed else 0
    finally:
        try:
            sandbox.set_faults("b2", {})
        except Exception as exc:  # noqa: BLE001 - the run's own error matters more
            log(f"resetting the B2 knobs failed: {exc}")
        try:  # whatever a failed round left in the bucket
            run_module({**module_args, "state": "absent"}, work, env)
        except (SystemExit, OSError) as exc:
            log(f"cleaning the bucket failed: {exc}")
        subprocess.run(["rm", "-rf", str(work)], check=False)
        up.close()


if __name__ == "__main__":
    sys.exit(main())
