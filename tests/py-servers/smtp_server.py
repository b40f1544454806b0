"""The SMTP server of the mail tests: aiosmtpd with AUTH (PLAIN and LOGIN) against one
username and password, and STARTTLS, implicit TLS or (for the plain-text tests) neither,
with a certificate from test_ca. Every message it accepts is written to --out as
NNNN.json: the envelope, the AUTH login and password the client used, whether the
session was encrypted, the message bytes (base64), and the message as Python's own MIME
parser reads it (headers decoded, the text and HTML bodies, each attachment's name, type
and bytes), for the test to check.

--refuse ADDRESS answers RCPT for that address with 550; --tempfail N answers the
first N DATA commands with 451 (a temporary failure the client should retry).
It prints `listening on PORT` when it takes connections and exits when stdin closes
(the test process is gone)."""

import argparse
import base64
import email
import email.policy
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

import test_ca


def parse(raw):
    """The message as the standard library's MIME parser reads it."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out = {"headers": [[k, str(v)] for k, v in msg.items()], "text": None, "html": None,
           "attachments": []}
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.is_attachment():
            out["attachments"].append({
                "filename": part.get_filename(),
                "content_type": part.get_content_type(),
                "data_b64": base64.b64encode(part.get_payload(decode=True) or b"").decode(),
            })
        elif part.get_content_type() == "text/plain" and out["text"] is None:
            out["text"] = part.get_content()
        elif part.get_content_type() == "text/html" and out["html"] is None:
            out["html"] = part.get_content()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--mode", choices=["starttls", "tls", "plain"], required=True)
    p.add_argument("--refuse", action="append", default=[])
    p.add_argument("--tempfail", type=int, default=0)
    a = p.parse_args()

    paths = test_ca.make(a.out)
    state = {"n": 0, "tempfail": a.tempfail}
    lock = threading.Lock()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == a.user.encode()
            and auth_data.password == a.password.encode()
        )
        attempts = os.path.join(a.out, "auth-attempts.jsonl")
        with lock, open(attempts, "a") as f:
            login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else None
            f.write(json.dumps({"mechanism": mechanism, "login": login, "ok": ok}) + "\n")
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address in a.refuse:
                return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            with lock:
                if state["tempfail"] > 0:
                    state["tempfail"] -= 1
                    return "451 4.3.0 Temporary failure, try again later"
                state["n"] += 1
                n = state["n"]
            auth = session.auth_data
            raw = envelope.original_content or envelope.content
            record = {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "auth_login": auth.login.decode() if auth else None,
                "auth_password": auth.password.decode() if auth else None,
                # session.ssl is set by STARTTLS; implicit TLS shows on the transport.
                "encrypted": session.ssl is not None
                or server.transport.get_extra_info("sslcontext") is not None,
                "data_b64": base64.b64encode(raw).decode(),
                "parsed": parse(raw),
            }
            tmp = os.path.join(a.out, "%04d.json.tmp" % n)
            with open(tmp, "w") as f:
                json.dump(record, f)
            # Renamed into place whole, so a reader never sees half a file.
            os.rename(tmp, os.path.join(a.out, "%04d.json" % n))
            return "250 2.0.0 Message accepted"

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(paths["server.pem"], paths["server.key"])
    kwargs = dict(
        hostname="127.0.0.1",
        port=a.port,
        authenticator=authenticator,
        auth_required=True,
        decode_data=False,
    )
    if a.mode == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    elif a.mode == "tls":
        kwargs.update(ssl_context=ctx, auth_require_tls=False)
    else:
        kwargs.update(auth_require_tls=False)
    controller = Controller(Handler(), **kwargs)
    controller.start()
    print("listening on %d" % a.port, flush=True)
    sys.stdin.buffer.read()
    os._exit(0)


if __name__ == "__main__":
    main()
