"""The private names of aiosmtpd, dkimpy and pyspf the gateway relies on, pinned.

The SMTP session overrides private aiosmtpd methods and reads its internals;
the checks replace dkimpy functions and subclass pyspf's query. Those
libraries are pinned in pyproject.toml to the versions tested; when one is
upgraded, this file says at once what the upgrade broke, instead of a
policy that silently stops applying.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiosmtpd.smtp
import dkim
import dkim.crypto
import dkim.util
import pytest
import spf
from dkim.canonicalization import CanonicalizationPolicy

ROOT = Path(__file__).resolve().parents[2]

# name -> the parameters (after self) the gateway calls it with or overrides it with
AIOSMTPD_METHODS = {
    "_handle_client": [],
    "_getaddr": ["arg"],
    "_call_handler_hook": ["command", "args"],
    "_reset_timeout": ["duration"],
    "_set_post_data_state": [],
    "_timeout_cb": [],
    "_create_session": [],
    "_syntax_available": ["method"],
    "check_helo_needed": ["helo"],
    "connection_lost": ["error"],
    "push": ["status"],
    "smtp_MAIL": ["arg"], "smtp_RCPT": ["arg"], "smtp_DATA": ["arg"], "smtp_VRFY": ["arg"],
    "smtp_HELP": ["arg"], "smtp_NOOP": ["arg"], "smtp_RSET": ["arg"], "smtp_AUTH": ["arg"],
}


def pinned(package: str) -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in dependencies if d.split("==")[0].strip().lower() == package]
    assert "==" in spec, f"{package} must be pinned with == in pyproject.toml: {spec}"
    return spec.split("==")[1].strip()


@pytest.mark.parametrize("package", ["aiosmtpd", "dkimpy", "pyspf"])
def test_installed_versions_are_the_pinned_ones(package: str) -> None:
    assert version(package) == pinned(package), (
        f"{package} {version(package)} is installed but {pinned(package)} is the version tested: "
        "re-check the names in this file, then move the pin")


@pytest.mark.parametrize(("name", "parameters"), AIOSMTPD_METHODS.items())
def test_aiosmtpd_methods_we_override_or_call(name: str, parameters: list[str]) -> None:
    method = getattr(aiosmtpd.smtp.SMTP, name, None)
    assert method is not None, f"aiosmtpd.smtp.SMTP.{name} is gone"
    assert list(inspect.signature(method).parameters)[1:] == parameters, f"SMTP.{name} changed its signature"


def test_aiosmtpd_help_metadata_and_instance_state() -> None:
    """HELP reads @syntax attributes; the session reads these instance attributes."""
    for name in ("smtp_MAIL", "smtp_RCPT", "smtp_DATA", "smtp_VRFY", "smtp_HELP", "smtp_NOOP", "smtp_RSET"):
        assert hasattr(getattr(aiosmtpd.smtp.SMTP, name), "__smtp_syntax__"), name

    async def build() -> aiosmtpd.smtp.SMTP:
        return aiosmtpd.smtp.SMTP(object(), loop=asyncio.get_running_loop())

    smtp = asyncio.run(build())
    for attribute in ("_smtp_methods", "_handle_hooks", "session", "envelope", "transport", "event_handler",
                      "data_size_limit", "enable_SMTPUTF8", "_decode_data", "local_part_limit"):
        assert hasattr(smtp, attribute), f"aiosmtpd SMTP instances no longer have {attribute}"
    assert isinstance(smtp._smtp_methods, dict)


def test_asyncio_stream_reader_keeps_its_buffer_where_the_session_unreads() -> None:
    async def build() -> asyncio.StreamReader:
        return asyncio.StreamReader()

    assert isinstance(asyncio.run(build())._buffer, bytearray)


def test_dkimpy_functions_we_replace_or_call() -> None:
    for owner, name in ((dkim, "rfc822_parse"), (dkim.crypto, "int2str"), (dkim.crypto, "str2int"),
                        (dkim, "evaluate_pk"), (dkim, "arc_verify"), (dkim.util, "parse_tag_value"),
                        (dkim, "DKIM"), (CanonicalizationPolicy, "from_c_value"),
                        (dkim, "RSASSA_PKCS1_v1_5_verify"), (dkim, "parse_public_key")):
        assert callable(getattr(owner, name, None)), f"dkimpy no longer has {owner.__name__}.{name}"
    assert list(inspect.signature(dkim.DKIM.verify).parameters) == ["self", "idx", "dnsfunc"]
    for name in ("DKIMException", "KeyFormatError", "ValidationError", "MessageFormatError",
                 "ParameterError", "DnsTimeoutError", "CV_Pass", "CV_None"):
        assert hasattr(dkim, name), f"dkimpy no longer has dkim.{name}"
    verifier = dkim.DKIM(b"From: a@b.example\r\n\r\nbody\r\n")
    assert isinstance(verifier.headers, list) and isinstance(verifier.body, bytes)


def test_pyspf_query_internals_the_subclass_relies_on() -> None:
    assert list(inspect.signature(spf.query.dns).parameters) == ["self", "name", "qtype", "cnames", "ignore_void"]
    query = spf.query(i="192.0.2.1", s="a@b.example", h="b.example")
    assert isinstance(query.cache, dict) and hasattr(query, "void_lookups") and hasattr(query, "o")
    assert isinstance(spf.MAX_VOID_LOOKUPS, int)
    assert issubclass(spf.TempError, Exception) and issubclass(spf.PermError, Exception)
