"""A local HTTPS server speaking Google's OAuth endpoints and the Gmail import and labels API.

It stands in for accounts.google.com, oauth2.googleapis.com and
gmail.googleapis.com, which cannot be reached from here; the gateway talks
to it through the real google-api-python-client, google-auth and
google-auth-oauthlib (point them at it with ``gmail.api_endpoint`` and
``gmail.token_uri``, and trust its certificate with REQUESTS_CA_BUNDLE and
HTTPLIB2_CA_CERTS). It serves TLS because oauthlib insists on https.

Endpoints:
- ``GET /o/oauth2/auth``: consent, granted at once; redirects to the
  redirect_uri with a code (or the error the test scripts).
- ``POST /token``: authorization_code and refresh_token grants.
- ``POST /upload/gmail/v1/users/me/messages/import``: media, multipart and
  resumable uploads (``PUT`` to the session URI for the chunks).
- ``GET|POST /gmail/v1/users/me/labels``.
Failures are scripted per account (``fail_next``), as Mailman's testing MTA does.
"""

from __future__ import annotations

import base64
import datetime
import email.parser
import email.policy
import ipaddress
import json
import resource
import secrets
import ssl
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CLIENT_ID = "test-client.apps.googleusercontent.test"
CLIENT_SECRET = "test-client-secret-c0ffee"


_CERTIFICATE: tuple[Path, Path] | None = None


def certificate() -> tuple[Path, Path]:
    """One certificate per test process: httplib2 reads HTTPLIB2_CA_CERTS once, at import."""
    global _CERTIFICATE
    if _CERTIFICATE is None:
        _CERTIFICATE = make_certificate(Path(tempfile.mkdtemp(prefix="gmail-test-cert-")))
    return _CERTIFICATE


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost; returns (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "gmail-test-cert.pem", folder / "gmail-test-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Imported:
    account: str
    raw: bytes
    label_ids: list[str]
    params: dict[str, str]
    upload: str  # media | multipart | resumable
    chunks: int = 1


@dataclass
class Upload:
    account: str
    metadata: dict[str, Any]
    params: dict[str, str]
    size: int
    data: bytearray = field(default_factory=bytearray)
    chunks: int = 0


class GmailTestServer:
    def __init__(self, folder: Path | None = None, *, keep_raw: bool = True, open_tokens: bool = False) -> None:
        """``keep_raw=False`` keeps only sizes (benchmarks); ``open_tokens`` accepts any
        refresh token of the form ``1//open:<account>`` (benchmarks write token files themselves)."""
        self.keep_raw = keep_raw
        self.open_tokens = open_tokens
        self.imported_bytes = 0
        self.cert, self.key = certificate()
        self.lock = threading.Lock()
        self.refresh_tokens: dict[str, str] = {}   # refresh token -> account
        self.access_tokens: dict[str, str] = {}    # access token -> account
        self.revoked: set[str] = set()
        self.codes: dict[str, dict[str, str]] = {}  # authorization code -> request
        self.imported: list[Imported] = []
        self.labels: dict[str, list[dict[str, str]]] = {}
        self.failures: dict[str, list[tuple[int, str, dict[str, str]]]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, account)
        self.consents: list[dict[str, str]] = []
        self.uploads: dict[str, Upload] = {}
        self.omit_refresh_token = False
        self.access_token_lifetime = 3600
        self.refresh_calls = 0
        # Cleared by ``stall_imports``: an import request then waits, unanswered, until ``release_imports``.
        self.imports_open = threading.Event()
        self.imports_open.set()
        self.stalled = 0  # import requests waiting at the gate right now
        self._server: ThreadingHTTPServer | None = None

    # -- set-up -------------------------------------------------------------

    def start(self) -> GmailTestServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, name="gmail-test-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def token_uri(self) -> str:
        return self.url + "token"

    def client_secret_json(self) -> dict[str, Any]:
        return {"installed": {
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_uri": self.url + "o/oauth2/auth", "token_uri": self.token_uri,
            "redirect_uris": ["http://localhost"],
        }}

    def env(self) -> dict[str, str]:
        """Environment for a process that must trust this server's certificate."""
        return {"REQUESTS_CA_BUNDLE": str(self.cert), "HTTPLIB2_CA_CERTS": str(self.cert)}

    def issue_refresh_token(self, account: str) -> str:
        token = "1//test-refresh-" + secrets.token_hex(12)
        with self.lock:
            self.refresh_tokens[token] = account.lower()
        return token

    def revoke(self, refresh_token: str) -> None:
        with self.lock:
            self.revoked.add(refresh_token)
            for access, owner in list(self.access_tokens.items()):
                if owner == self.refresh_tokens.get(refresh_token):
                    del self.access_tokens[access]

    def fail_next(self, account: str, status: int, reason: str = "", headers: dict[str, str] | None = None,
                  times: int = 1) -> None:
        with self.lock:
            self.failures.setdefault(account.lower(), []).extend([(status, reason, headers or {})] * times)

    def stall_imports(self) -> None:
        """Hold every import request unanswered (a Gmail that stops responding) until ``release_imports``."""
        self.imports_open.clear()

    def release_imports(self) -> None:
        self.imports_open.set()

    def imports_for(self, account: str) -> list[Imported]:
        with self.lock:
            return [i for i in self.imported if i.account == account.lower()]

    # -- request handling (called from the handler threads) -------------------

    def account_for(self, authorization: str) -> str | None:
        if not authorization.startswith("Bearer "):
            return None
        with self.lock:
            return self.access_tokens.get(authorization[7:])

    def scripted_failure(self, account: str) -> tuple[int, str, dict[str, str]] | None:
        with self.lock:
            queue = self.failures.get(account)
            return queue.pop(0) if queue else None

    def token_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
        grant = form.get("grant_type")
        with self.lock:
            if grant == "refresh_token":
                self.refresh_calls += 1
                token = form.get("refresh_token", "")
                account = self.refresh_tokens.get(token)
                if account is None and self.open_tokens and token.startswith("1//open:"):
                    account = token[len("1//open:"):]
                if account is None or token in self.revoked:
                    return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
                access = "ya29.test-" + secrets.token_hex(12)
                self.access_tokens[access] = account
                return 200, {"access_token": access, "expires_in": self.access_token_lifetime,
                             "token_type": "Bearer", "scope": "https://www.googleapis.com/auth/gmail.insert"}
            if grant == "authorization_code":
                request = self.codes.pop(form.get("code", ""), None)
                if request is None:
                    return 400, {"error": "invalid_grant", "error_description": "Malformed auth code."}
                if form.get("redirect_uri") != request["redirect_uri"]:
                    return 400, {"error": "redirect_uri_mismatch", "error_description": "Bad Request"}
                account = request["login_hint"] or "consented@gmail.test"
                refresh = "1//test-refresh-" + secrets.token_hex(12)
                self.refresh_tokens[refresh] = account
                access = "ya29.test-" + secrets.token_hex(12)
                self.access_tokens[access] = account
                answer: dict[str, Any] = {"access_token": access, "expires_in": 3600, "token_type": "Bearer",
                                          "scope": request["scope"]}
                if not self.omit_refresh_token:
                    answer["refresh_token"] = refresh
                return 200, answer
        return 400, {"error": "unsupported_grant_type"}

    def consent(self, params: dict[str, str]) -> str:
        """The redirect location after an (automatic) consent."""
        code = "4/test-code-" + secrets.token_hex(8)
        with self.lock:
            self.consents.append(params)
            self.codes[code] = {"redirect_uri": params.get("redirect_uri", ""), "scope": params.get("scope", ""),
                                "login_hint": params.get("login_hint", "")}
        query = urllib.parse.urlencode({"code": code, "state": params.get("state", ""),
                                        "scope": params.get("scope", "")})
        return f"{params.get('redirect_uri', '')}?{query}"

    def record(self, imported: Imported) -> dict[str, Any]:
        with self.lock:
            self.imported_bytes += len(imported.raw)
            if not self.keep_raw:
                imported.raw = b""
            self.imported.append(imported)
            number = len(self.imported)
        return {"id": f"msg{number:06d}", "threadId": f"thr{number:06d}", "labelIds": imported.label_ids}


def _handler_for(state: GmailTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -- plumbing --------------------------------------------------------

        def _body(self) -> bytes:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if payload is not None:
                self.send_header("content-type", "application/json; charset=UTF-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
            message = {401: "Request had invalid authentication credentials.",
                       429: "Too many requests", 500: "Backend Error"}.get(status, reason or "error")
            self._send(status, {"error": {"code": status, "message": message,
                                          "errors": [{"reason": reason or "backendError", "message": message}]}},
                       headers)

        def _split(self) -> tuple[str, dict[str, str]]:
            parsed = urllib.parse.urlsplit(self.path)
            return parsed.path, dict(urllib.parse.parse_qsl(parsed.query))

        def _authorised(self, path: str) -> str | None:
            account = state.account_for(self.headers.get("authorization", ""))
            with state.lock:
                state.requests.append((self.command, path, account or ""))
            if account is None:
                self._error(401, "authError")
                return None
            failure = state.scripted_failure(account)
            if failure is not None:
                status, reason, headers = failure
                self._error(status, reason, headers)
                return None
            return account

        # -- verbs -----------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802
            path, params = self._split()
            if path == "/o/oauth2/auth":
                self.send_response(302)
                self.send_header("location", state.consent(params))
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if path == "/gmail/v1/users/me/labels":
                account = self._authorised(path)
                if account is not None:
                    with state.lock:
                        labels = list(state.labels.get(account, []))
                    self._send(200, {"labels": labels})
                return
            if path == "/_stats":  # for benchmarks: how much was imported, and this server's CPU
                usage = resource.getrusage(resource.RUSAGE_SELF)
                with state.lock:
                    self._send(200, {"imports": len(state.imported), "bytes": state.imported_bytes,
                                     "cpu": usage.ru_utime + usage.ru_stime})
                return
            self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            path, params = self._split()
            body = self._body()
            if path == "/token":
                form = dict(urllib.parse.parse_qsl(body.decode()))
                basic = self.headers.get("authorization", "")
                if basic.startswith("Basic "):  # client authentication as RFC 6749 2.3.1 prefers
                    user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
                    form.setdefault("client_id", urllib.parse.unquote(user))
                    form.setdefault("client_secret", urllib.parse.unquote(password))
                status, answer = state.token_grant(form)
                self._send(status, answer)
                return
            if path == "/gmail/v1/users/me/labels":
                account = self._authorised(path)
                if account is not None:
                    name = json.loads(body)["name"]
                    with state.lock:
                        labels = state.labels.setdefault(account, [])
                        label = {"id": f"Label_{len(labels) + 1}", "name": name, "type": "user"}
                        labels.append(label)
                    self._send(200, label)
                return
            if path.endswith("/gmail/v1/users/me/messages/import"):
                account = self._authorised(path)
                if account is not None:
                    with state.lock:
                        state.stalled += 1
                    state.imports_open.wait(120)
                    with state.lock:
                        state.stalled -= 1
                    self._import(account, params, body)
                return
            self._send(404, {"error": "not found"})

        def do_PUT(self) -> None:  # noqa: N802
            path, _ = self._split()
            body = self._body()
            with state.lock:
                upload = state.uploads.get(path)
            if upload is None:
                self._send(404, {"error": "no such upload session"})
                return
            content_range = self.headers.get("content-range", "")
            spec, _, total = content_range.removeprefix("bytes ").partition("/")
            if spec == "*":
                self._send(308, None, {"range": f"bytes=0-{len(upload.data) - 1}"} if upload.data else {})
                return
            start = int(spec.partition("-")[0])
            if start != len(upload.data):
                self._send(400, {"error": {"code": 400, "message": "bad range"}})
                return
            upload.data.extend(body)
            upload.chunks += 1
            if total != "*" and len(upload.data) >= int(total):
                with state.lock:
                    state.uploads.pop(path, None)
                self._send(200, state.record(Imported(
                    upload.account, bytes(upload.data), list(upload.metadata.get("labelIds", [])),
                    upload.params, "resumable", upload.chunks)))
                return
            self._send(308, None, {"range": f"bytes=0-{len(upload.data) - 1}"})

        def _import(self, account: str, params: dict[str, str], body: bytes) -> None:
            kind = params.get("uploadType", "")
            if kind == "media":
                self._send(200, state.record(Imported(account, body, [], params, kind)))
            elif kind == "multipart":
                metadata, raw = _split_related(self.headers.get("content-type", ""), body)
                self._send(200, state.record(Imported(account, raw, list(metadata.get("labelIds", [])), params, kind)))
            elif kind == "resumable":
                session = f"/upload/session/{secrets.token_hex(8)}"
                size = int(self.headers.get("x-upload-content-length") or 0)
                with state.lock:
                    state.uploads[session] = Upload(account, json.loads(body or b"{}"), params, size)
                host = self.headers.get("host", "127.0.0.1")
                self._send(200, None, {"location": f"https://{host}{session}"})
            else:
                self._send(400, {"error": {"code": 400, "message": f"uploadType {kind!r}"}})

    return Handler


def _split_related(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON metadata and the raw message of a multipart/related upload, bytes untouched."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    parts = body.split(b"--" + boundary)
    sections = [p for p in parts[1:] if not p.startswith(b"--")]
    meta_part, media_part = sections[0], sections[1]
    meta_body = meta_part.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in meta_part else meta_part.split(b"\n\n", 1)[1]
    header_end = media_part.find(b"\r\n\r\n")
    sep = 4
    if header_end < 0:
        header_end, sep = media_part.find(b"\n\n"), 2
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(media_part[:header_end])
    assert headers.get("Content-Transfer-Encoding", "binary").lower() == "binary"
    raw = media_part[header_end + sep:]
    # The part ends with the newline that precedes the closing delimiter.
    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    return json.loads(meta_body), raw


def main() -> None:
    """``python -m tests.gmailserver``: serve for a benchmark until standard input closes.

    Prints one JSON line with the URL and certificate path; keeps no message
    bytes and accepts ``1//open:<account>`` refresh tokens.
    """
    import sys

    server = GmailTestServer(keep_raw=False, open_tokens=True).start()
    print(json.dumps({"url": server.url, "token_uri": server.token_uri, "cert": str(server.cert),
                      "client": server.client_secret_json()}), flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
