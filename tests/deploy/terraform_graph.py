"""The Terraform tree read with python-hcl2, as plain data for the wiring tests.

There is no terraform binary here, so the tests check by construction what
`terraform validate` would: every module's variables, outputs, resources and
calls, and every IAM policy document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"

META_ARGUMENTS = {"source", "for_each", "count", "providers", "depends_on", "version"}


def unquote(value: Any) -> Any:
    """python-hcl2 keeps string literals quoted: '"abc"' → 'abc'; other values as they are."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if not k.startswith("__")}
    return value


@cache
def parse(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        parsed: dict[str, Any] = hcl2.load(handle)
    return parsed


def strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


@dataclass
class Module:
    """One directory of .tf files."""

    path: Path
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: set[str] = field(default_factory=set)  # "aws_s3_bucket.archive"
    data: set[str] = field(default_factory=set)  # "aws_region.current"
    locals: set[str] = field(default_factory=set)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # module name → arguments
    policy_documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    text: str = ""

    @property
    def name(self) -> str:
        return str(self.path.relative_to(TERRAFORM))

    def required_variables(self) -> set[str]:
        return {name for name, body in self.variables.items() if "default" not in body}

    def called_module(self, call: str) -> Module:
        return load_module((self.path / unquote(self.calls[call]["source"])).resolve())


def _items(blocks: list[dict[str, Any]]) -> Iterator[tuple[str, Any]]:
    for block in blocks:
        for key, value in block.items():
            yield unquote(key), value


@cache
def load_module(path: Path) -> Module:
    module = Module(path=path)
    for tf in sorted(path.glob("*.tf")):
        parsed = parse(tf)
        module.text += strip_comments(tf.read_text()) + "\n"
        for name, body in _items(parsed.get("variable", [])):
            module.variables[name] = body
        for name, body in _items(parsed.get("output", [])):
            module.outputs[name] = body
        for kind, named in _items(parsed.get("resource", [])):
            module.resources.update(f"{kind}.{unquote(n)}" for n in named if not n.startswith("__"))
        for kind, named in _items(parsed.get("data", [])):
            for name, body in named.items():
                if name.startswith("__"):
                    continue
                module.data.add(f"{kind}.{unquote(name)}")
                if kind == "aws_iam_policy_document":
                    module.policy_documents[unquote(name)] = body
        for block in parsed.get("locals", []):
            module.locals.update(k for k in block if not k.startswith("__"))
        for name, body in _items(parsed.get("module", [])):
            module.calls[name] = {k: v for k, v in body.items() if not k.startswith("__")}
    return module


def modules() -> list[Module]:
    return [load_module(p) for p in sorted((TERRAFORM / "modules").iterdir()) if p.is_dir()]


def environments() -> list[Module]:
    return [load_module(p) for p in sorted((TERRAFORM / "environments").iterdir()) if p.is_dir()]


def statements(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every statement of a policy document, the ones inside `dynamic "statement"` included."""
    for statement in document.get("statement", []):
        yield unquote(statement)
    for dynamic in document.get("dynamic", []):
        for kind, body in dynamic.items():
            if unquote(kind) == "statement":
                for content in body.get("content", []):
                    yield unquote(content)


def references(text: str, prefix: str) -> set[str]:
    """`prefix.name` references in expressions (prefix: var, local, module)."""
    return set(re.findall(rf"\b{prefix}\.([A-Za-z_][A-Za-z0-9_]*)", text))


def resource_references(text: str) -> set[str]:
    """`aws_x.name` and `data.aws_x.name` references (provider resource types only)."""
    found = set(re.findall(r"(?<![\w.])((?:data\.)?(?:aws|archive)_[a-z0-9_]+\.[a-z_][a-z0-9_]*)", text))
    return found
