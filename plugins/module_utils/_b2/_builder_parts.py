# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the builder's half of b2_builder_upload (not an API).
"""Upload one file to B2 from the builder with Python's standard library only.

The action plugin ``b2_builder_upload`` sends this file's source and then one line of JSON
(the job) on the standard input of ``python3 -c``; nothing secret is on a command line.
The job holds only what B2 grants for this one file: upload URLs with their
authorization tokens (``b2_get_upload_part_url`` for the parts of a large file started by
the controller, or ``b2_get_upload_url`` for a file of one request). No application key.

Each worker owns one grant (B2 lets one upload at a time use an upload token) and one
HTTPS connection; parts stream from disk with their SHA-1 computed while they are sent
and appended after the data (``hex_digits_at_end``), which B2 checks. A grant that B2
ends (a 5xx, 408, 401, a dropped connection) is retired and the part goes back to the
queue for another; a part whose bytes arrived altered (B2's "Checksum did not match")
is sent again. When the grants run out the parts still missing are reported and the
controller hands out fresh grants for a next round. One more thread computes the whole
file's sha256, read in order, which the controller checks before finishing the file.

The answer is one line of JSON on the standard output. Written for Python 3.6 and later
(Debian 10's python3 is 3.7).
"""

import hashlib
import http.client
import json
import os
import queue
import socket
import ssl
import sys
import threading
import time
from urllib.parse import quote, urlsplit

BLOCK = 1024 * 1024
RETIRE_STATUS = (401, 408, 429, 500, 502, 503, 504)


class PartFailed(Exception):
    """A part B2 refused for good (not a transfer problem another try could mend)."""


class Retire(Exception):
    """The grant is spent (B2 ended it, or its connection broke): the part goes back."""


def tls_context(cadata):
    """The system's CAs, or the ones the controller trusts for B2 (its ca_bundle) when given."""
    context = ssl.create_default_context()
    if cadata:
        context = ssl.create_default_context(cadata=cadata)
    return context


class Grant:
    """One upload URL and its token, with its own connection (kept alive between parts)."""

    def __init__(self, url, token, context, timeout):
        self.parts = urlsplit(url)
        self.path = self.parts.path
        self.token = token
        self.context = context
        self.timeout = timeout
        self.conn = None

    def connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(
                self.parts.hostname, self.parts.port or 443, context=self.context, timeout=self.timeout
            )
        return self.conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def post(self, headers, path, offset, length):
        """POST bytes [offset, offset+length) of ``path`` plus their SHA-1; (status, body, sha1)."""
        conn = self.connection()
        sha1 = hashlib.sha1()  # noqa: S324 - B2's integrity checksum
        try:
            conn.putrequest("POST", self.path, skip_accept_encoding=True)
            conn.putheader("Authorization", self.token)
            conn.putheader("Content-Length", str(length + 40))
            conn.putheader("X-Bz-Content-Sha1", "hex_digits_at_end")
            for key, value in headers:
                conn.putheader(key, value)
            conn.endheaders()
            with open(path, "rb") as handle:
                handle.seek(offset)
                left = length
                while left > 0:
                    data = handle.read(min(BLOCK, left))
                    if not data:
                        raise PartFailed("%s is shorter than expected (changed while uploading?)" % path)
                    sha1.update(data)
                    conn.send(data)
                    left -= len(data)
            conn.send(sha1.hexdigest().encode())
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Retire("connection: %s" % exc) from None
        return response.status, body, sha1.hexdigest()


def b2_error(body):
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
        return "%s %s" % (doc.get("code"), doc.get("message"))
    except ValueError:
        return body[:200].decode("utf-8", "replace")


class Job:
    """The work of one run: parts (or the one small file) over the grants it was given."""

    def __init__(self, spec):
        self.spec = spec
        self.path = spec["path"]
        self.context = tls_context(spec.get("cadata") or "")
        self.grants = queue.Queue()
        for url, token in spec["grants"]:
            self.grants.put(Grant(url, token, self.context, float(spec.get("timeout") or 300)))
        self.todo = queue.Queue()
        self.attempts = {}
        self.sha1s = {}
        self.errors = []
        self.notes = []
        self.retired = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.file = None

    def note(self, text):
        with self.lock:
            self.notes.append(text)

    def give_up(self, text):
        with self.lock:
            self.errors.append(text)
        self.stop.set()

    def upload_part(self, grant, number, offset, length):
        headers = [("X-Bz-Part-Number", str(number))]
        status, body, sha1 = grant.post(headers, self.path, offset, length)
        return self.judge(grant, status, body, sha1, "part %d" % number)

    def upload_small(self, grant):
        spec = self.spec
        headers = [("X-Bz-File-Name", quote(spec["name"], safe="/")), ("Content-Type", spec["content_type"])]
        headers += [("X-Bz-Info-%s" % k, quote(str(v), safe="")) for k, v in sorted(spec["info"].items())]
        status, body, sha1 = grant.post(headers, self.path, 0, int(spec["size"]))
        self.file = self.judge(grant, status, body, sha1, "the file")
        return sha1

    def judge(self, grant, status, body, sha1, what):
        """B2's answer: the stored entry, or Retire (another grant) / ValueError (send again) / PartFailed."""
        if status == 200:
            entry = json.loads(body.decode("utf-8"))
            if entry.get("contentSha1") not in (None, sha1):
                raise ValueError("B2 stored %s with sha1 %s, not %s" % (what, entry.get("contentSha1"), sha1))
            return entry
        text = b2_error(body)
        if status in RETIRE_STATUS:
            grant.close()
            raise Retire("%s: HTTP %d %s" % (what, status, text))
        if status == 400 and "checksum" in text.lower():
            raise ValueError("%s: its bytes arrived altered (sha1 %s did not match what B2 received)" % (what, sha1))
        raise PartFailed("%s: HTTP %d %s" % (what, status, text))

    def worker(self):
        grant = None
        while not self.stop.is_set():
            try:
                item = self.todo.get_nowait()
            except queue.Empty:
                break
            if grant is None:
                try:
                    grant = self.grants.get_nowait()
                except queue.Empty:
                    self.todo.put(item)  # for the next round, with fresh grants
                    break
            grant = self.attempt(grant, item)
        if grant is not None:
            grant.close()

    def attempt(self, grant, item):
        """One try of one item; the grant to go on with (None when it was retired)."""
        number = item[0]
        with self.lock:
            self.attempts[number] = self.attempts.get(number, 0) + 1
            tries = self.attempts[number]
        try:
            if self.spec["kind"] == "small":
                sha1 = self.upload_small(grant)
            else:
                sha1 = self.upload_part(grant, *item)["contentSha1"]
            with self.lock:
                self.sha1s[number] = sha1
            return grant
        except Retire as exc:
            self.note(str(exc))
            with self.lock:
                self.retired += 1
            self.requeue(item, tries, str(exc))
            return None
        except ValueError as exc:
            self.note(str(exc))
            self.requeue(item, tries, str(exc))
            return grant
        except PartFailed as exc:
            self.give_up(str(exc))
            return grant

    def requeue(self, item, tries, reason):
        if tries >= int(self.spec.get("attempts") or 5):
            self.give_up("%s after %d attempts" % (reason, tries))
        else:
            self.todo.put(item)

    def run(self):
        spec = self.spec
        if spec["kind"] == "small":
            self.todo.put((1, 0, int(spec["size"])))
        else:
            for item in spec["parts"]:
                self.todo.put(tuple(item))
        count = max(1, min(int(spec.get("threads") or 4), len(spec["grants"])))
        workers = [threading.Thread(target=self.worker) for _worker in range(count)]
        for thread in workers:
            thread.daemon = True
            thread.start()
        for thread in workers:
            thread.join()
        missing = sorted(item[0] for item in drain(self.todo))
        return {"sha1s": self.sha1s, "missing": missing, "errors": self.errors, "notes": self.notes[-20:],
                "retired": self.retired, "attempts": sum(self.attempts.values()), "file": self.file}  # fmt: skip


def drain(todo):
    items = []
    while True:
        try:
            items.append(todo.get_nowait())
        except queue.Empty:
            return items


def file_sha256(path, out):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 * BLOCK), b""):
            digest.update(block)
    out["sha256"] = digest.hexdigest()


def main():
    spec = json.loads(sys.stdin.buffer.readline().decode("utf-8"))
    started = time.time()
    path = spec["path"]
    answer = {"size": os.path.getsize(path)}
    if answer["size"] != int(spec["size"]):
        answer["errors"] = [
            "%s has %d bytes, not %s (changed since it was built?)" % (path, answer["size"], spec["size"])
        ]
        sys.stdout.write(json.dumps(answer) + "\n")
        return
    hashed = {}
    hasher = None
    if spec.get("sha256"):
        hasher = threading.Thread(target=file_sha256, args=(path, hashed))
        hasher.daemon = True
        hasher.start()
        if spec["kind"] == "small":  # checked before the one request: a wrong file is never stored
            hasher.join()
            if hashed.get("sha256") != spec.get("expected_sha256"):
                answer.update(sha256=hashed.get("sha256"), errors=["sha256 mismatch, nothing uploaded"])
                sys.stdout.write(json.dumps(answer) + "\n")
                return
    socket.setdefaulttimeout(float(spec.get("timeout") or 300))
    answer.update(Job(spec).run())
    if hasher is not None:
        hasher.join()
        answer["sha256"] = hashed.get("sha256")
    answer["seconds"] = round(time.time() - started, 3)
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
