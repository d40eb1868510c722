"""``sesmail-gateway dns check DOMAIN``: what is published, what is wrong, and the records to add.

Checks, in order: MX (pointing at ``gateway.hostname``), SPF (checkdmarc:
parsed, DNS lookup count, whether it authorises SES for outbound), DMARC
(checkdmarc), the SES Easy-DKIM CNAMEs (tokens from SES), and MTA-STS and
TLS-RPT when present. DNS goes to ``checks.dns_servers`` (else the
system resolver). Exit status 1 when something required is missing or
wrong; warnings and optional records do not count.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

import dns.nameserver
from botocore.exceptions import BotoCoreError, ClientError
from checkdmarc.dmarc import check_dmarc
from checkdmarc.spf import check_spf

from sesmail_gateway import aws
from sesmail_gateway.checks.dns import DnsStatus, Resolver, ascii_domain
from sesmail_gateway.cli.common import CliError, json_flag, load_config, print_json
from sesmail_gateway.cli.routes import Subparsers
from sesmail_gateway.config import Config, parse_hostport

OK, MISSING, WRONG, WARN, ABSENT = "ok", "missing", "wrong", "warning", "absent"
SES_SPF_INCLUDE = "include:amazonses.com"


@dataclass
class Finding:
    """One check: its status, what was seen, and the exact records that would fix it."""

    check: str
    status: str
    detail: str
    required: bool = True
    add: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.required and self.status in (MISSING, WRONG)


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("dns", parents=[common], help="check a domain's DNS records",
                           description="Check the DNS records a domain needs for this gateway and SES.")
    leaves = group.add_subparsers(dest="dns_command", metavar="ACTION", required=True)
    check = leaves.add_parser("check", parents=[common], help="MX, SPF, DMARC, SES DKIM, MTA-STS, TLS-RPT",
                              description="Show what DOMAIN publishes, what is wrong, and what to add.")
    check.add_argument("domain", metavar="DOMAIN")
    json_flag(check)
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args)
    domain = ascii_domain(args.domain)
    if not domain or "." not in domain:
        raise CliError(f"not a domain name: {args.domain!r}")
    findings = check_domain(config, domain)
    if args.json:
        print_json({"domain": domain, "ok": not any(f.failed for f in findings),
                    "checks": [asdict(f) for f in findings]})
    else:
        _print(domain, findings)
    return 1 if any(f.failed for f in findings) else 0


def check_domain(config: Config, domain: str) -> list[Finding]:
    resolver = Resolver(config.checks.dns_servers, timeout=config.checks.dns_timeout)
    nameservers = [dns.nameserver.Do53Nameserver(*parse_hostport(s, default_port=53))
                   for s in config.checks.dns_servers] or None
    timeout = config.checks.dns_timeout
    return [
        check_mx(resolver, domain, config.gateway.hostname),
        check_spf_record(domain, nameservers, timeout),
        check_dmarc_record(domain, nameservers, timeout),
        *check_ses_dkim(config, resolver, domain),
        check_optional_txt(resolver, "MTA-STS", f"_mta-sts.{domain}", "v=STSv1;"),
        check_optional_txt(resolver, "TLS-RPT", f"_smtp._tls.{domain}", "v=TLSRPTv1;"),
    ]


def check_mx(resolver: Resolver, domain: str, hostname: str) -> Finding:
    answer = resolver.query(domain, "MX")
    fix = [f"{domain}. MX 10 {hostname}."]
    if answer.status is DnsStatus.TEMPFAIL:
        return Finding("MX", WRONG, f"DNS failure: {answer.error or 'no answer'}")
    hosts = [record.split()[-1].lower() for record in answer.texts]
    if not hosts:
        return Finding("MX", MISSING, "no MX record", add=fix)
    if hostname.lower() not in hosts:
        return Finding("MX", WRONG, f"MX points at {', '.join(hosts)}, not {hostname}", add=fix)
    return Finding("MX", OK, ", ".join(answer.texts))


def check_spf_record(domain: str, nameservers: Any, timeout: float) -> Finding:
    result = check_spf(domain, nameservers=nameservers, timeout=timeout)
    record = result.get("record")
    if not record:
        return Finding("SPF", MISSING, str(result.get("error") or "no SPF record"),
                       add=[f'{domain}. TXT "v=spf1 mx {SES_SPF_INCLUDE} -all"'])
    if not result.get("valid"):
        return Finding("SPF", WRONG, f"{record}: {result.get('error')}")
    detail = f"{record} ({result.get('dns_lookups', 0)}/10 DNS lookups)"
    if SES_SPF_INCLUDE not in record.lower().split():
        fixed = record.replace(" -all", f" {SES_SPF_INCLUDE} -all").replace(" ~all", f" {SES_SPF_INCLUDE} ~all")
        return Finding("SPF", WARN, detail + "; does not authorise SES for outbound mail", required=False,
                       add=[f'{domain}. TXT "{fixed}"'])
    return Finding("SPF", OK, detail + "; authorises SES")


def check_dmarc_record(domain: str, nameservers: Any, timeout: float) -> Finding:
    result = check_dmarc(domain, nameservers=nameservers, timeout=timeout)
    record = result.get("record")
    if not record:
        return Finding("DMARC", MISSING, str(result.get("error") or "no DMARC record"),
                       add=[f'_dmarc.{domain}. TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@{domain}"'])
    if not result.get("valid"):
        return Finding("DMARC", WRONG, f"{record}: {result.get('error')}")
    policy = result.get("tags", {}).get("p", {}).get("value", "?")
    where = result.get("location") or domain
    return Finding("DMARC", OK, f"{record} (p={policy}, published at _dmarc.{where})")


def check_ses_dkim(config: Config, resolver: Resolver, domain: str) -> list[Finding]:
    try:
        answer = aws.client(config.aws, "ses").get_identity_dkim_attributes(Identities=[domain])
    except (BotoCoreError, ClientError) as exc:
        return [Finding("SES DKIM", WARN, f"cannot ask SES for the DKIM tokens: {exc}", required=False)]
    tokens = answer.get("DkimAttributes", {}).get(domain, {}).get("DkimTokens", [])
    if not tokens:
        return [Finding("SES DKIM", WARN, f"{domain} has no Easy DKIM tokens in SES "
                        "(not an SES identity in this account and region?)", required=False)]
    return [_dkim_cname(resolver, domain, token) for token in tokens]


def _dkim_cname(resolver: Resolver, domain: str, token: str) -> Finding:
    name, target = f"{token}._domainkey.{domain}", f"{token}.dkim.amazonses.com"
    fix = [f"{name}. CNAME {target}."]
    answer = resolver.query(name, "CNAME")
    found = [text.lower() for text in answer.texts]
    if not found:
        return Finding("SES DKIM", MISSING, f"no CNAME at {name}", add=fix)
    if target not in found:
        return Finding("SES DKIM", WRONG, f"{name} points at {', '.join(found)}, not {target}", add=fix)
    return Finding("SES DKIM", OK, f"{name} -> {target}")


def check_optional_txt(resolver: Resolver, check: str, name: str, prefix: str) -> Finding:
    answer = resolver.txt(name)
    texts = [text for text in answer.texts if text.lower().startswith(prefix.split(";")[0].lower())]
    if not texts:
        return Finding(check, ABSENT, f"not published at {name} (optional)", required=False)
    if len(texts) > 1 or not texts[0].replace(" ", "").lower().startswith(prefix.lower()):
        return Finding(check, WRONG, f"{name}: {' | '.join(texts)}", required=False)
    return Finding(check, OK, f"{name}: {texts[0]}", required=False)


def _print(domain: str, findings: list[Finding]) -> None:
    print(f"DNS check for {domain}")
    width = max(len(f.check) for f in findings)
    for finding in findings:
        print(f"  {finding.status.upper():8} {finding.check.ljust(width)}  {finding.detail}")
    fixes = [record for f in findings if f.status != OK for record in f.add]
    if fixes:
        print("\nRecords to add or change:")
        for record in fixes:
            print(f"  {record}")
    problems = sum(1 for f in findings if f.failed)
    print(f"\n{problems} required record(s) missing or wrong" if problems else "\nall required records are in place")
