"""Build the configured scanners from ``[scan]``; None when scanning is off."""

from __future__ import annotations

from sesmail_gateway.config import Config
from sesmail_gateway.scan import Scanner
from sesmail_gateway.scan.clamd import ClamdScanner
from sesmail_gateway.scan.rspamd import RspamdScanner
from sesmail_gateway.scan.service import Observe, Scanning
from sesmail_gateway.scan.spamd import SpamdScanner


def build_scanning(config: Config, observe: Observe | None = None) -> Scanning | None:
    scan = config.scan
    if not scan.enabled:
        return None
    scanners: list[Scanner] = []
    if scan.rspamd_url:
        scanners.append(RspamdScanner(scan.rspamd_url, timeout=scan.timeout, hostname=config.gateway.hostname))
    if scan.spamd:
        scanners.append(SpamdScanner(scan.spamd, timeout=scan.timeout))
    if scan.clamd:
        scanners.append(ClamdScanner(scan.clamd, timeout=scan.timeout))
    return Scanning(scan, scanners, observe=observe)
