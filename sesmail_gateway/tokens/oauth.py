"""``token refresh``: Google's installed-app consent flow, for a desktop or a headless server.

The authorization URL asks for ``gmail.insert`` (and ``gmail.labels`` only
when label names are configured), ``access_type=offline`` and
``prompt=consent`` so Google always returns a refresh token, with PKCE.
The redirect comes back to ``http://localhost:PORT/``, where this command
listens; on a server without a browser (``--no-browser``) the operator
opens the URL elsewhere and either forwards the port (``ssh -L``) or
pastes the address the browser ended on. The code is exchanged through
google-auth-oauthlib. Errors explain what the operator does next; none
quotes a code, a token or the client secret.
"""

from __future__ import annotations

import calendar
import errno
import os
import queue
import select
import sys
import threading
import time
import urllib.parse
import webbrowser
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import IO, Any

from sesmail_gateway.errors import TemporaryFailure
from sesmail_gateway.tokens import GMAIL_SCOPE, GOOGLE_TOKEN_URI, ClientCredentials, StoredToken

LABELS_SCOPE = "https://www.googleapis.com/auth/gmail.labels"

NO_REFRESH_TOKEN = (
    "Google returned no refresh token. That happens when this Google account already granted "
    "this OAuth client access and the consent screen was skipped. This command always asks with "
    "prompt=consent and access_type=offline; if it still happens, remove the app's access at "
    "https://myaccount.google.com/permissions and run `token refresh` again."
)


def redirect_mismatch_help(redirect_uri: str) -> str:
    return (
        f"Google refused the redirect address {redirect_uri}. Use an OAuth client of type "
        "\"Desktop app\" (it accepts http://localhost on any port), or, for a \"Web application\" "
        f"client, add {redirect_uri} under \"Authorized redirect URIs\" in the Google Cloud console "
        "(APIs & Services → Credentials), then run `token refresh` again."
    )


class ConsentError(Exception):
    """The consent did not produce a usable refresh token; the text says what to do."""


def refresh_access_token(token: StoredToken, client: ClientCredentials | None, *, token_uri: str = "",
                         session: Any = None, now: Callable[[], float] = time.time) -> tuple[str, float]:
    """Trade the refresh token for an access token; returns (access token, expiry as epoch seconds).

    The token's own client wins over the store's. Raises google-auth's
    RefreshError (classified by ``errors.classify``) or TemporaryFailure
    when there is no client at all.
    """
    from google.auth.transport.requests import Request
    from google.oauth2.credentials import Credentials

    client_id = token.client_id or (client.client_id if client else "")
    client_secret = token.client_secret or (client.client_secret if client else "")
    if not client_id:
        raise TemporaryFailure("no OAuth client for Gmail: set gmail.client_secrets or store "
                               "client_secret.json in the token store")
    uri = token_uri or (client.token_uri if client else "") or GOOGLE_TOKEN_URI
    credentials = Credentials(  # type: ignore[no-untyped-call]
        token=None, refresh_token=token.refresh_token, token_uri=uri,
        client_id=client_id, client_secret=client_secret)
    credentials.refresh(Request(session))  # type: ignore[no-untyped-call]
    # google-auth keeps the expiry as a naive UTC datetime.
    expiry = credentials.expiry
    expires_at = float(calendar.timegm(expiry.timetuple())) if expiry else now() + 3600.0
    return str(credentials.token), expires_at


def scopes_for(label_ids: Iterable[str], system_labels: Iterable[str]) -> list[str]:
    system = set(system_labels)
    scopes = [GMAIL_SCOPE]
    if any(label not in system for label in label_ids):
        scopes.append(LABELS_SCOPE)
    return scopes


class _Callback(BaseHTTPRequestHandler):
    """Receives the browser's redirect; hands the query to the waiting command."""

    results: queue.Queue[dict[str, str]]

    def do_GET(self) -> None:  # noqa: N802
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if "code" not in query and "error" not in query:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        page = (b"<html><body><p>sesmail-gateway received Google's answer. You can close this window "
                b"and return to the terminal.</p></body></html>")
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)
        self.results.put(query)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _listen(port: int) -> HTTPServer:
    handler = type("Callback", (_Callback,), {"results": queue.Queue()})
    try:
        return HTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConsentError(f"port {port} is already in use on this machine: pass --port with a free port "
                               "(a \"Web application\" client needs http://localhost:PORT/ registered "
                               "for that port too)") from None
        raise ConsentError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None


def run_consent(
    client: ClientCredentials,
    *,
    account: str,
    scopes: list[str],
    port: int = 8080,
    open_browser: bool = True,
    timeout: float = 600.0,
    out: Callable[[str], None] = print,
    stdin: IO[str] | None = None,
) -> str:
    """Run the consent flow; returns the refresh token. Raises ConsentError."""
    from google_auth_oauthlib.flow import Flow
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error

    redirect_uri = f"http://localhost:{port}/"
    if client.redirect_uris and not _loopback_allowed(client.redirect_uris, redirect_uri):
        raise ConsentError(redirect_mismatch_help(redirect_uri))
    server = _listen(port)
    # Google may grant scopes the client asked for before (incremental auth): do not fail on a wider set.
    os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = Flow.from_client_config(client.to_json(), scopes=scopes, redirect_uri=redirect_uri)
    url, state = flow.authorization_url(access_type="offline", prompt="consent", login_hint=account)
    thread = threading.Thread(target=server.serve_forever, name="oauth-callback", daemon=True)
    thread.start()
    try:
        out(f"Open this address in a browser and sign in as {account}:\n\n  {url}\n")
        if open_browser:
            webbrowser.open(url)
            out(f"Waiting for Google to redirect the browser to {redirect_uri} ...")
        else:
            out(f"This machine listens on {redirect_uri} for the answer. From a browser on another machine, "
                f"either forward the port first (ssh -L {port}:localhost:{port} THIS-HOST), or, when the "
                "browser ends on an address that does not load, paste that whole address here and press Enter.")
        answer = _wait(server, state, timeout, None if open_browser else (stdin or sys.stdin))
    finally:
        server.shutdown()
        server.server_close()
    if "error" in answer:
        if answer["error"] == "access_denied":
            raise ConsentError("the consent was declined in the browser; nothing was stored")
        if answer["error"] == "redirect_uri_mismatch":
            raise ConsentError(redirect_mismatch_help(redirect_uri))
        raise ConsentError(f"Google answered the consent with error {answer['error']!r}")
    try:
        token = flow.fetch_token(code=answer["code"])
    except OAuth2Error as exc:
        if exc.error == "redirect_uri_mismatch":
            raise ConsentError(redirect_mismatch_help(redirect_uri)) from None
        if exc.error == "invalid_client":
            raise ConsentError("Google does not know this OAuth client (invalid_client): check "
                               "gmail.client_secrets, or download client_secret.json again") from None
        raise ConsentError(f"exchanging the code failed: {exc.error}"
                           + (f" ({exc.description})" if exc.description else "")) from None
    except OSError as exc:
        raise ConsentError(f"cannot reach Google's token endpoint: {type(exc).__name__}") from None
    granted = token.get("scope", "")
    granted_scopes = set(granted.split() if isinstance(granted, str) else granted or [])
    if granted_scopes and GMAIL_SCOPE not in granted_scopes:
        raise ConsentError("the consent did not grant permission to add mail to Gmail (gmail.insert): "
                           "run `token refresh` again and leave that box ticked")
    refresh_token = token.get("refresh_token")
    if not refresh_token:
        raise ConsentError(NO_REFRESH_TOKEN)
    return str(refresh_token)


def _wait(server: HTTPServer, state: str, timeout: float, stdin: IO[str] | None) -> dict[str, str]:
    """The first answer with our state: from the browser's redirect, or pasted on standard input."""
    results: queue.Queue[dict[str, str]] = server.RequestHandlerClass.results  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer: dict[str, str] | None = results.get(timeout=0.2)
        except queue.Empty:
            answer = _pasted(stdin) if stdin is not None else None
        if answer is not None and answer.get("state") == state:
            return answer
        # No answer yet, or one for another request (a stale tab): keep waiting.
    raise ConsentError(f"no answer from Google within {timeout:.0f} s. If the browser showed "
                       "\"Error 400: redirect_uri_mismatch\", the OAuth client is of the wrong type: "
                       + redirect_mismatch_help(f"http://localhost:{server.server_address[1]}/"))


def _pasted(stdin: IO[str]) -> dict[str, str] | None:
    """A redirect address pasted by the operator, if a line is ready."""
    try:
        ready, _, _ = select.select([stdin], [], [], 0)
    except (ValueError, OSError, TypeError):
        ready = [stdin]
    if not ready:
        return None
    line = stdin.readline()
    if not line:
        return None
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(line.strip()).query))
    return query if ("code" in query or "error" in query) else None


def _loopback_allowed(registered: Iterable[str], redirect_uri: str) -> bool:
    """An installed client lists bare loopback addresses (any port works); a web client needs the exact one."""
    for uri in registered:
        parsed = urllib.parse.urlsplit(uri)
        if parsed.hostname in ("localhost", "127.0.0.1") and parsed.port is None:
            return True
        if uri.rstrip("/") == redirect_uri.rstrip("/"):
            return True
        if parsed.scheme == "urn":
            return True
    return False
