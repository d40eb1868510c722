"""Terraform checked by every static means there is without a terraform binary.

python-hcl2 parses every file; the module graph is walked (variables declared
and passed, outputs and references real); every IAM policy document is read
statement by statement; the instance profile and the Lambda roles are compared
with the AWS calls the code makes; checkov runs over the whole tree.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from sesmail_gateway.lambdas import outbound_metrics
from tests.deploy.terraform_graph import (
    ROOT,
    TERRAFORM,
    Module,
    environments,
    load_module,
    modules,
    parse,
    references,
    resource_references,
    statements,
    unquote,
)

TF_FILES = sorted(TERRAFORM.rglob("*.tf"))
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
ALL = modules() + environments()

# Actions AWS defines without a resource type: "*" is the only resource they take.
NO_RESOURCE_TYPE = {"cloudwatch:PutMetricData", "xray:PutTelemetryRecords", "xray:PutTraceSegments",
                    "route53:ListHostedZones"}


def test_the_tree_has_every_module_and_both_environments() -> None:
    assert {m.path.name for m in modules()} >= {"gateway", "storage", "ses_outbound", "lambdas", "monitoring", "dns"}
    assert {m.path.name for m in environments()} == {"test", "prod"}


@pytest.mark.parametrize("path", TF_FILES, ids=[str(p.relative_to(TERRAFORM)) for p in TF_FILES])
def test_every_file_parses(path: Path) -> None:
    assert isinstance(parse(path), dict)


# --- The module graph ---------------------------------------------------------------------


@pytest.mark.parametrize("module", ALL, ids=[m.name for m in ALL])
def test_variables_used_are_declared_and_declared_ones_used(module: Module) -> None:
    used = references(module.text, "var")
    assert used <= set(module.variables), f"undeclared: {used - set(module.variables)}"
    assert set(module.variables) <= used, f"never used: {set(module.variables) - used}"
    for name, body in module.variables.items():
        assert body.get("description"), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"


@pytest.mark.parametrize("module", ALL, ids=[m.name for m in ALL])
def test_locals_and_resources_referenced_exist(module: Module) -> None:
    assert references(module.text, "local") <= module.locals
    for ref in resource_references(module.text):
        if ref.startswith("data."):
            assert ref.removeprefix("data.") in module.data, f"{module.name}: no data source {ref}"
        else:
            assert ref in module.resources, f"{module.name}: no resource {ref}"


@pytest.mark.parametrize("module", ALL, ids=[m.name for m in ALL])
def test_module_calls_match_the_called_modules(module: Module) -> None:
    for call, arguments in module.calls.items():
        target = module.called_module(call)
        assert target.path.is_dir(), f"{module.name}: module {call} source missing"
        inputs = set(arguments) - {"source", "for_each", "count", "providers", "depends_on"}
        assert inputs <= set(target.variables), f"{module.name}.{call}: unknown inputs {inputs - set(target.variables)}"
        assert target.required_variables() <= inputs, f"{module.name}.{call}: missing {target.required_variables() - inputs}"
    for call, output in re.findall(r"\bmodule\.([a-z_0-9]+)\.([a-z_0-9]+)", module.text):
        assert call in module.calls, f"{module.name}: no module {call}"
        assert output in module.called_module(call).outputs, f"{module.name}: module.{call} has no output {output}"


@pytest.mark.parametrize("module", ALL, ids=[m.name for m in ALL])
def test_outputs_are_described_and_reference_real_things(module: Module) -> None:
    assert module.outputs, f"{module.name} has no outputs"
    for name, body in module.outputs.items():
        assert body.get("description"), f"output {name} has no description"
        value = json.dumps(body["value"])
        assert resource_references(value) or references(value, "module") or references(value, "local") \
            or references(value, "var"), f"output {name} references nothing"


def test_both_environments_wire_every_module_with_the_same_inputs() -> None:
    test, prod = (load_module(TERRAFORM / "environments" / name) for name in ("test", "prod"))
    assert set(test.calls) == set(prod.calls) == {"storage", "ses_outbound", "lambdas", "gateway", "dns", "monitoring"}
    for call in test.calls:
        assert test.calls[call] == prod.calls[call], f"module {call} is wired differently in test and prod"
    assert set(test.variables) == set(prod.variables)
    assert set(test.outputs) == set(prod.outputs) >= {"mx_hostnames", "smtp_endpoint", "dashboard_url", "records_to_publish"}


def test_every_module_has_a_readme_line() -> None:
    readme = (TERRAFORM / "README.md").read_text()
    for module in modules():
        assert f"`modules/{module.path.name}`" in readme, f"README says nothing of {module.path.name}"


# --- IAM ----------------------------------------------------------------------------------------


def all_statements() -> list[tuple[str, str, dict[str, object]]]:
    found = []
    for module in modules():
        for name, document in module.policy_documents.items():
            found += [(module.path.name, name, statement) for statement in statements(document)]
    return found


def test_policies_are_written_as_documents_never_as_inline_json() -> None:
    for module in ALL:
        assert not re.search(r"\bAction\s*=", module.text), f"{module.name}: a policy outside aws_iam_policy_document"


@pytest.mark.parametrize(("module", "document", "statement"), all_statements(),
                         ids=[f"{m}.{d}.{s.get('sid', i)}" for i, (m, d, s) in enumerate(all_statements())])
def test_every_statement_lists_explicit_actions_and_resources(module: str, document: str, statement: dict[str, object]) -> None:
    actions = statement.get("actions")
    resources = statement.get("resources")
    assert isinstance(actions, list) and actions, "no actions"
    if actions == ["sts:AssumeRole"] and statement.get("principals"):
        return  # a trust policy: its resource is the role it belongs to
    assert resources, "no resources"
    if statement.get("effect") == "Deny":
        return  # a deny may be broad: it only takes away
    for action in actions:
        assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", str(action)), f"not an explicit action: {action}"
    if resources == ["*"]:
        key_policy = module == "kms_key" and document == "key"  # in a key policy, "*" is the key itself
        assert key_policy or set(actions) <= NO_RESOURCE_TYPE, f"{actions} on every resource"


def gateway_statements() -> dict[str, dict[str, object]]:
    document = load_module(TERRAFORM / "modules" / "gateway").policy_documents["gateway"]
    return {str(s["sid"]): s for s in statements(document)}


DAEMON_ACTIONS = {
    "dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:PutItem",
    "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem",
    "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
    "ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:PutParameter", "ssm:DeleteParameter",
    "kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey",
    "ses:SendRawEmail", "cloudwatch:PutMetricData",
}


def test_instance_profile_allows_exactly_the_daemons_actions() -> None:
    daemon = {str(a) for sid, s in gateway_statements().items() if sid != "LogShipping" for a in s["actions"]}  # type: ignore[attr-defined]
    assert daemon == DAEMON_ACTIONS
    shipping = gateway_statements()["LogShipping"]["actions"]
    assert set(shipping) == {"logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"}  # type: ignore[arg-type]
    bounces = gateway_statements()["BounceDsns"]
    assert bounces["condition"][0]["variable"] == "ses:FromAddress"  # type: ignore[index]
    assert gateway_statements()["Metrics"]["condition"][0]["variable"] == "cloudwatch:namespace"  # type: ignore[index]


def test_certbot_may_change_only_its_own_challenge_records() -> None:
    document = load_module(TERRAFORM / "modules" / "gateway").policy_documents["dns01"]
    found = {str(s["sid"]): s for s in statements(document)}
    assert {str(a) for s in found.values() for a in s["actions"]} == {  # type: ignore[attr-defined]
        "route53:ChangeResourceRecordSets", "route53:GetChange", "route53:ListHostedZones"}
    conditions = {c["variable"]: c["values"] for c in found["Dns01ChallengeRecords"]["condition"]}  # type: ignore[attr-defined]
    assert conditions["route53:ChangeResourceRecordSetsRecordTypes"] == ["TXT"]
    assert "_acme-challenge." in str(conditions["route53:ChangeResourceRecordSetsNormalizedRecordNames"])


# AWS calls made through helpers rather than by operation name.
TRANSFER_CALLS = {"upload": {"s3:PutObject", "s3:AbortMultipartUpload"},
                  "upload_fileobj": {"s3:PutObject", "s3:AbortMultipartUpload"},
                  "upload_file": {"s3:PutObject", "s3:AbortMultipartUpload"}}


def operations(services: tuple[str, ...]) -> dict[str, set[str]]:
    """snake_case boto3 method → IAM actions, for the services' operations."""
    session = botocore.session.get_session()
    found: dict[str, set[str]] = {}
    for service in services:
        prefix = "ses" if service == "sesv2" else service
        for op in session.get_service_model(service).operation_names:
            found.setdefault(xform_name(op), set()).add(f"{prefix}:{op}")
    return found


def calls_in(paths: list[Path], services: tuple[str, ...]) -> dict[str, set[str]]:
    """AWS operations the files call by name: method name → candidate IAM actions."""
    known = operations(services)
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            # client.op(...), and partial(client.op, ...) for a call made later
            targets = [node.func]
            if isinstance(node.func, ast.Name) and node.func.id == "partial" and node.args:
                targets = [node.args[0]]
            for target in targets:
                if not isinstance(target, ast.Attribute):
                    continue
                name = target.attr
                if name in known:
                    found[name] = known[name]
                elif name in TRANSFER_CALLS and "s3" in services:
                    found[name] = TRANSFER_CALLS[name]
    return found


def daemon_modules() -> list[Path]:
    """sesmail_gateway modules reachable by import from the composition root (the daemon)."""
    package = ROOT / "sesmail_gateway"
    seen: set[Path] = set()
    todo = [package / "app.py"]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                rel = ".".join(str(base.relative_to(ROOT)).split("/"))
                mod = f"{rel}.{node.module}" if node.module else rel
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("sesmail_gateway") and ".lambdas" not in name:
                    target = ROOT / name.replace(".", "/")
                    todo += [target.with_suffix(".py"), target / "__init__.py"]
    return sorted(p for p in seen if "aws" in p.read_text() or "boto" in p.read_text())


def test_every_aws_call_of_the_daemon_is_allowed() -> None:
    allowed = DAEMON_ACTIONS
    calls = calls_in(daemon_modules(), ("dynamodb", "s3", "ssm", "ses", "sesv2", "cloudwatch"))
    missing = {name: actions for name, actions in calls.items() if not actions & allowed}
    assert not missing, f"the daemon calls {missing}, which the instance profile does not allow"


def lambda_actions(document: str) -> set[str]:
    module = load_module(TERRAFORM / "modules" / "lambdas")
    return {str(a) for s in statements(module.policy_documents[document]) for a in s["actions"]}  # type: ignore[attr-defined]


def test_credential_manager_role_allows_exactly_what_its_code_calls() -> None:
    source = [ROOT / "sesmail_gateway" / "lambdas" / "credential_manager.py"]
    calls = calls_in(source, ("iam", "kms", "dynamodb"))
    called = {next(iter(actions)) for actions in calls.values()}
    stream = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"}
    runtime = {"sqs:SendMessage", "logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTelemetryRecords",
               "xray:PutTraceSegments", "kms:GenerateDataKey", "kms:Decrypt"}  # DLQ, logs, traces
    assert lambda_actions("credential_manager") == called | stream | runtime | {"iam:TagUser"}  # tags on CreateUser


def test_outbound_metrics_role_allows_exactly_what_its_code_calls() -> None:
    source = [ROOT / "sesmail_gateway" / "lambdas" / "outbound_metrics.py"]
    called = {next(iter(a)) for a in calls_in(source, ("cloudwatch",)).values()}
    assert called == {"cloudwatch:PutMetricData"}
    runtime = {"sqs:SendMessage", "kms:GenerateDataKey", "kms:Decrypt", "logs:CreateLogStream", "logs:PutLogEvents",
               "xray:PutTelemetryRecords", "xray:PutTraceSegments"}
    assert lambda_actions("outbound_metrics") == called | runtime


def test_lambda_packages_point_at_the_functions() -> None:
    module = load_module(TERRAFORM / "modules" / "lambdas")
    parsed = [parse(p) for p in sorted(module.path.glob("*.tf"))]
    functions = [unquote(body) for p in parsed for block in p.get("resource", [])
                 for kind, named in block.items() if unquote(kind) == "aws_lambda_function"
                 for body in named.values() if isinstance(body, dict)]
    assert len(functions) == 2
    lambdas_dir = ROOT / "sesmail_gateway" / "lambdas"
    for function in functions:
        file, entry = function["handler"].split(".")
        assert (lambdas_dir / f"{file}.py").exists()
        assert f"def {entry}(" in (lambdas_dir / f"{file}.py").read_text()
        assert f'source_file = "${{local.source_dir}}/{file}.py"' in module.text
    assert (module.path / "../../../sesmail_gateway/lambdas").resolve() == lambdas_dir


def test_stream_filter_and_failure_handling_of_the_credential_manager() -> None:
    text = load_module(TERRAFORM / "modules" / "lambdas").text
    assert 'prefix = "SMTP_USER#"' in text
    assert 'function_response_types        = ["ReportBatchItemFailures"]' in text
    assert "bisect_batch_on_function_error = true" in text


def test_dashboard_and_alarms_use_the_lambdas_metric_names() -> None:
    text = load_module(TERRAFORM / "modules" / "monitoring").text
    for name in outbound_metrics.METRICS:
        assert f'"{name}"' in text


def test_storage_defaults_keep_the_seed_meaning() -> None:
    storage = load_module(TERRAFORM / "modules" / "storage")
    assert storage.variables["email_retention_days"]["default"] == 90
    assert unquote(storage.variables["existing_table_name"]["default"]) == ""
    assert 'stream_view_type = "NEW_AND_OLD_IMAGES"' in storage.text
    assert 'billing_mode     = "PAY_PER_REQUEST"' in storage.text
    dns = load_module(TERRAFORM / "modules" / "dns")
    assert "migration_mx_hostnames" in dns.variables


# --- checkov ------------------------------------------------------------------------------------


def test_checkov_finds_nothing_and_every_skip_says_why() -> None:
    assert CHECKOV.exists(), "checkov is installed into .venv-tools by `make .venv-tools/.installed`"
    result = subprocess.run(
        [str(CHECKOV), "-d", str(TERRAFORM), "--framework", "terraform", "--output", "json", "--quiet",
         "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] > 200 and summary["parsing_errors"] == 0
    for path in TF_FILES:
        for reason in re.findall(r"#checkov:skip=CKV[0-9A-Z_]+:?(.*)", path.read_text()):
            assert len(reason.strip()) >= 20, f"{path}: skip without a reason"
