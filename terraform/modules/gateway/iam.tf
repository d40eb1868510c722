# The instance profile allows exactly what the daemon calls (tests/deploy checks
# the list against the daemon's source; DeleteParameter is the token store's
# `token delete`), plus the CloudWatch agent shipping the daemon's JSON log, and
# (in a policy of its own) certbot's DNS-01 challenge. No action is a wildcard.

locals {
  partition      = data.aws_partition.current.partition
  region         = data.aws_region.current.name
  account_id     = data.aws_caller_identity.current.account_id
  token_path_arn = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter${var.token_ssm_path}"
}

data "aws_iam_policy_document" "assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gateway" {
  name               = local.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_instance_profile" "gateway" {
  name = local.name
  role = aws_iam_role.gateway.name
  tags = var.tags
}

data "aws_iam_policy_document" "gateway" {
  statement {
    sid    = "RoutingRules"
    effect = "Allow"
    actions = [
      "dynamodb:BatchGetItem",
      "dynamodb:BatchWriteItem",
      "dynamodb:DeleteItem",
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:Query",
      "dynamodb:Scan",
      "dynamodb:UpdateItem",
    ]
    resources = [var.table_arn]
  }

  statement {
    sid    = "ArchiveWrite"
    effect = "Allow"
    # PutObject also covers CreateMultipartUpload, UploadPart and CompleteMultipartUpload.
    actions = [
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
      "s3:PutObject",
    ]
    resources = ["${var.bucket_arn}/${var.archive_prefix}/*"]
  }

  statement {
    sid    = "GmailTokens"
    effect = "Allow"
    actions = [
      "ssm:DeleteParameter",
      "ssm:GetParameter",
      "ssm:GetParameters",
      "ssm:GetParametersByPath",
      "ssm:PutParameter",
    ]
    resources = [local.token_path_arn, "${local.token_path_arn}/*"]
  }

  statement {
    sid    = "DataKeys"
    effect = "Allow"
    actions = [
      "kms:Decrypt",
      "kms:Encrypt",
      "kms:GenerateDataKey",
    ]
    resources = var.kms_key_arns
  }

  statement {
    sid       = "BounceDsns"
    effect    = "Allow"
    actions   = ["ses:SendRawEmail"]
    resources = [var.ses_identity_arn, var.ses_configuration_set_arn]
    condition {
      test     = "StringEquals"
      variable = "ses:FromAddress"
      values   = [var.bounce_sender]
    }
  }

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
    sid    = "LogShipping"
    effect = "Allow"
    actions = [
      "logs:CreateLogStream",
      "logs:DescribeLogStreams",
      "logs:PutLogEvents",
    ]
    resources = [aws_cloudwatch_log_group.gateway.arn, "${aws_cloudwatch_log_group.gateway.arn}:log-stream:*"]
  }
}

# certbot on each host answers Let's Encrypt's DNS-01 challenge for its own
# name only: a TXT record at _acme-challenge.<host>, nothing else in the zone.
data "aws_iam_policy_document" "dns01" {
  statement {
    sid       = "Dns01ChallengeRecords"
    effect    = "Allow"
    actions   = ["route53:ChangeResourceRecordSets"]
    resources = ["arn:${local.partition}:route53:::hostedzone/${var.zone_id}"]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
      values   = [for host in local.hostnames : "_acme-challenge.${host}"]
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsRecordTypes"
      values   = ["TXT"]
    }
  }

  statement {
    sid       = "Dns01ChallengeStatus"
    effect    = "Allow"
    actions   = ["route53:GetChange"]
    resources = ["arn:${local.partition}:route53:::change/*"]
  }

  statement {
    sid       = "Dns01FindZone"
    effect    = "Allow"
    actions   = ["route53:ListHostedZones"]
    resources = ["*"] # ListHostedZones has no resource type
  }
}

resource "aws_iam_role_policy" "dns01" {
  name   = "certbot-dns01"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.dns01.json
}

resource "aws_iam_role_policy" "gateway" {
  name   = "sesmail-gateway"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.gateway.json
}
