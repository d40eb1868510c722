# The two Lambdas of sesmail_gateway/lambdas/, each packaged alone with
# archive_file (they import nothing else from the package):
#  - credential_manager on the routing table's stream, filtered to SMTP_USER# records;
#  - outbound_metrics subscribed to the SES events topic.
# Each has its own least-privilege role, a KMS-encrypted dead-letter queue and a
# KMS-encrypted log group.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  source_dir      = "${path.module}/../../../sesmail_gateway/lambdas"
  credential_name = "${var.name_prefix}-credential-manager-${var.environment}"
  metrics_name    = "${var.name_prefix}-outbound-metrics-${var.environment}"
  smtp_users_arn  = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:user/ses-smtp-user-*"
  ses_arn_prefix  = "arn:${data.aws_partition.current.partition}:ses:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"
  # Identities and configuration sets of this account and region only; each user's
  # inline policy narrows further to its allowed_senders (ses:FromAddress).
  ses_identities_arn         = "${local.ses_arn_prefix}:identity/*"
  ses_configuration_sets_arn = "${local.ses_arn_prefix}:configuration-set/*"
}

module "credentials_key" {
  source             = "../kms_key"
  alias              = "${var.name_prefix}-smtp-credentials-${var.environment}"
  description        = "sesmail-gateway ${var.environment}: SMTP credentials, Lambda environment, logs and dead letters"
  service_principals = ["logs.${data.aws_region.current.name}.amazonaws.com"]
  tags               = var.tags
}

# --- Packages ------------------------------------------------------------------------

data "archive_file" "credential_manager" {
  type        = "zip"
  source_file = "${local.source_dir}/credential_manager.py"
  output_path = "${path.module}/build/credential_manager.zip"
}

data "archive_file" "outbound_metrics" {
  type        = "zip"
  source_file = "${local.source_dir}/outbound_metrics.py"
  output_path = "${path.module}/build/outbound_metrics.zip"
}

# --- Dead letters and logs -------------------------------------------------------------

resource "aws_sqs_queue" "credential_manager_dlq" {
  name                      = "${local.credential_name}-dlq"
  kms_master_key_id         = module.credentials_key.arn
  message_retention_seconds = 1209600
  tags                      = var.tags
}

resource "aws_sqs_queue" "outbound_metrics_dlq" {
  name                      = "${local.metrics_name}-dlq"
  kms_master_key_id         = module.credentials_key.arn
  message_retention_seconds = 1209600
  tags                      = var.tags
}

resource "aws_cloudwatch_log_group" "credential_manager" {
  name              = "/aws/lambda/${local.credential_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = module.credentials_key.arn
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "outbound_metrics" {
  name              = "/aws/lambda/${local.metrics_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = module.credentials_key.arn
  tags              = var.tags
}

# --- Credential manager ----------------------------------------------------------------

# Every SMTP user is created under this boundary: whatever inline policy the
# function writes, the user can do nothing but send mail.
data "aws_iam_policy_document" "smtp_user_boundary" {
  statement {
    sid       = "SendMailOnly"
    effect    = "Allow"
    actions   = ["ses:SendRawEmail"]
    resources = [local.ses_identities_arn, local.ses_configuration_sets_arn]
  }
}

resource "aws_iam_policy" "smtp_user_boundary" {
  name        = "${var.name_prefix}-smtp-user-boundary-${var.environment}"
  description = "Permissions boundary of SES SMTP users created by the credential manager"
  policy      = data.aws_iam_policy_document.smtp_user_boundary.json
  tags        = var.tags
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "credential_manager" {
  name               = local.credential_name
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "credential_manager" {
  statement {
    sid    = "ReadStream"
    effect = "Allow"
    actions = [
      "dynamodb:DescribeStream",
      "dynamodb:GetRecords",
      "dynamodb:GetShardIterator",
      "dynamodb:ListStreams",
    ]
    resources = [var.table_stream_arn, "${var.table_arn}/stream/*"]
  }

  statement {
    sid       = "RecordState"
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [var.table_arn]
    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["SMTP_USER#*"]
    }
  }

  statement {
    sid       = "CreateUsersUnderTheBoundary"
    effect    = "Allow"
    actions   = ["iam:CreateUser", "iam:PutUserPolicy"]
    resources = [local.smtp_users_arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PermissionsBoundary"
      values   = [aws_iam_policy.smtp_user_boundary.arn]
    }
  }

  statement {
    sid    = "ManageSmtpUsers"
    effect = "Allow"
    actions = [
      "iam:CreateAccessKey",
      "iam:DeleteAccessKey",
      "iam:DeleteUser",
      "iam:DeleteUserPolicy",
      "iam:DetachUserPolicy",
      "iam:GetUser",
      "iam:ListAccessKeys",
      "iam:ListAttachedUserPolicies",
      "iam:ListUserPolicies",
      "iam:TagUser",
      "iam:UpdateAccessKey",
    ]
    resources = [local.smtp_users_arn]
  }

  statement {
    sid       = "EncryptCredentials"
    effect    = "Allow"
    actions   = ["kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"]
    resources = [module.credentials_key.arn]
  }

  statement {
    sid       = "DeadLetters"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.credential_manager_dlq.arn]
  }

  statement {
    sid       = "Logs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.credential_manager.arn}:*"]
  }

  statement {
    sid       = "Tracing"
    effect    = "Allow"
    actions   = ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
    resources = ["*"] # X-Ray has no resource types
  }
}

resource "aws_iam_role_policy" "credential_manager" {
  name   = "credential-manager"
  role   = aws_iam_role.credential_manager.id
  policy = data.aws_iam_policy_document.credential_manager.json
}

resource "aws_lambda_function" "credential_manager" {
  #checkov:skip=CKV_AWS_117:The function calls only AWS APIs (IAM, KMS, DynamoDB); a VPC would add NAT or endpoints and no isolation.
  #checkov:skip=CKV_AWS_272:Packaged from this repository by archive_file at plan time; no signing profile exists for that path.
  function_name                  = local.credential_name
  description                    = "SES SMTP credentials for SMTP_USER# records"
  role                           = aws_iam_role.credential_manager.arn
  runtime                        = "python3.12"
  handler                        = "credential_manager.handler"
  filename                       = data.archive_file.credential_manager.output_path
  source_code_hash               = data.archive_file.credential_manager.output_base64sha256
  timeout                        = 60
  memory_size                    = 256
  reserved_concurrent_executions = 2
  kms_key_arn                    = module.credentials_key.arn

  environment {
    variables = {
      TABLE_NAME               = var.table_name
      KMS_KEY_ID               = module.credentials_key.arn
      PERMISSIONS_BOUNDARY_ARN = aws_iam_policy.smtp_user_boundary.arn
    }
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.credential_manager_dlq.arn
  }

  tracing_config {
    mode = "Active"
  }

  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.credential_manager, aws_iam_role_policy.credential_manager]
}

resource "aws_lambda_event_source_mapping" "credential_manager" {
  event_source_arn               = var.table_stream_arn
  function_name                  = aws_lambda_function.credential_manager.arn
  starting_position              = "LATEST"
  batch_size                     = 10
  maximum_retry_attempts         = var.stream_retry_attempts
  bisect_batch_on_function_error = true
  function_response_types        = ["ReportBatchItemFailures"]

  filter_criteria {
    filter {
      pattern = jsonencode({ dynamodb = { Keys = { PK = { S = [{ prefix = "SMTP_USER#" }] } } } })
    }
  }

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.credential_manager_dlq.arn
    }
  }
}

# --- Outbound metrics ------------------------------------------------------------------

resource "aws_iam_role" "outbound_metrics" {
  name               = local.metrics_name
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "outbound_metrics" {
  statement {
    sid       = "Metrics"
    effect    = "Allow"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource type; the namespace condition scopes it
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }

  statement {
    sid       = "DeadLetters"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.outbound_metrics_dlq.arn]
  }

  statement {
    sid       = "DeadLetterKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [module.credentials_key.arn]
  }

  statement {
    sid       = "Logs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.outbound_metrics.arn}:*"]
  }

  statement {
    sid       = "Tracing"
    effect    = "Allow"
    actions   = ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
    resources = ["*"] # X-Ray has no resource types
  }
}

resource "aws_iam_role_policy" "outbound_metrics" {
  name   = "outbound-metrics"
  role   = aws_iam_role.outbound_metrics.id
  policy = data.aws_iam_policy_document.outbound_metrics.json
}

resource "aws_lambda_function" "outbound_metrics" {
  #checkov:skip=CKV_AWS_117:The function calls only CloudWatch; a VPC would add NAT or endpoints and no isolation.
  #checkov:skip=CKV_AWS_272:Packaged from this repository by archive_file at plan time; no signing profile exists for that path.
  function_name                  = local.metrics_name
  description                    = "CloudWatch Outbound* metrics from SES sending events"
  role                           = aws_iam_role.outbound_metrics.arn
  runtime                        = "python3.12"
  handler                        = "outbound_metrics.handler"
  filename                       = data.archive_file.outbound_metrics.output_path
  source_code_hash               = data.archive_file.outbound_metrics.output_base64sha256
  timeout                        = 30
  memory_size                    = 128
  reserved_concurrent_executions = 10
  kms_key_arn                    = module.credentials_key.arn

  environment {
    variables = {
      METRICS_NAMESPACE = var.metrics_namespace
    }
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.outbound_metrics_dlq.arn
  }

  tracing_config {
    mode = "Active"
  }

  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.outbound_metrics, aws_iam_role_policy.outbound_metrics]
}

resource "aws_lambda_function_event_invoke_config" "outbound_metrics" {
  function_name          = aws_lambda_function.outbound_metrics.function_name
  maximum_retry_attempts = 2
  destination_config {
    on_failure {
      destination = aws_sqs_queue.outbound_metrics_dlq.arn
    }
  }
}

resource "aws_lambda_permission" "outbound_metrics_from_sns" {
  statement_id  = "AllowSesEventsTopic"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.outbound_metrics.function_name
  principal     = "sns.amazonaws.com"
  source_arn    = var.ses_events_topic_arn
}

resource "aws_sns_topic_subscription" "outbound_metrics" {
  topic_arn = var.ses_events_topic_arn
  protocol  = "lambda"
  endpoint  = aws_lambda_function.outbound_metrics.arn
}
