"""The FTP server of the file-transfer tests: pyftpdlib serving --root to one username
and password, plain or explicit FTPS (AUTH TLS, control and data connections both
required to be protected) with a certificate from test_ca. Under the root,
`readonly/` may be read but not written (permission denied) and `full/` refuses every
write with ENOSPC (a server whose disk is full). Each login attempt is appended to
--root/../logins.jsonl. It prints `listening on PORT` when it takes connections and
exits when stdin closes (the test process is gone)."""

import argparse
import errno
import json
import os
import sys
import threading

from pyftpdlib.authorizers import AuthenticationFailed, DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import ThreadedFTPServer

import test_ca


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--tls", action="store_true")
    a = p.parse_args()

    for d in ("readonly", "full"):
        os.makedirs(os.path.join(a.root, d), exist_ok=True)
    logins = os.path.join(a.state, "logins.jsonl")
    lock = threading.Lock()

    class Authorizer(DummyAuthorizer):
        def validate_authentication(self, username, password, handler):
            ok = username == a.user and password == a.password
            with lock, open(logins, "a") as f:
                f.write(json.dumps({"login": username, "ok": ok,
                                    "tls": bool(getattr(handler, "_ssl_established", False))}) + "\n")
            if not ok:
                raise AuthenticationFailed("Authentication failed.")

    class FullDiskFS(AbstractedFS):
        def open(self, filename, mode):
            full = os.path.join(os.path.realpath(a.root), "full") + os.sep
            if ("w" in mode or "a" in mode) and os.path.realpath(filename).startswith(full):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().open(filename, mode)

    authorizer = Authorizer()
    authorizer.add_user(a.user, a.password, a.root, perm="elradfmwMT")
    authorizer.override_perm(a.user, os.path.join(a.root, "readonly"), perm="elr", recursive=True)

    if a.tls:
        paths = test_ca.make(a.state)
        handler = TLS_FTPHandler
        handler.certfile = paths["server.pem"]
        handler.keyfile = paths["server.key"]
        handler.tls_control_required = True
        handler.tls_data_required = True
    else:
        handler = FTPHandler
    handler.authorizer = authorizer
    handler.abstracted_fs = FullDiskFS
    handler.banner = "flow8 test FTP server ready."
    server = ThreadedFTPServer(("127.0.0.1", a.port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening on %d" % a.port, flush=True)
    sys.stdin.buffer.read()
    os._exit(0)


if __name__ == "__main__":
    main()
