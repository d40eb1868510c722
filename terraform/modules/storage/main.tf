# The routing table and the archive bucket, or a seed deployment's existing ones
# (existing_table_name / existing_bucket_name): those are read, never recreated.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  create_table  = var.existing_table_name == ""
  create_bucket = var.existing_bucket_name == ""
  table_name    = local.create_table ? "${var.name_prefix}-email-routing-${var.environment}" : var.existing_table_name
  bucket_name   = local.create_bucket ? "${var.name_prefix}-email-archive-${var.environment}-${data.aws_caller_identity.current.account_id}" : var.existing_bucket_name
}

module "data_key" {
  source             = "../kms_key"
  alias              = "${var.name_prefix}-data-${var.environment}"
  description        = "sesmail-gateway ${var.environment}: archive, routing table, gateway logs"
  service_principals = ["logs.${data.aws_region.current.name}.amazonaws.com"]
  tags               = var.tags
}

# --- Routing table -------------------------------------------------------------------

resource "aws_dynamodb_table" "rules" {
  count            = local.create_table ? 1 : 0
  name             = local.table_name
  billing_mode     = "PAY_PER_REQUEST"
  hash_key         = "PK"
  range_key        = "SK"
  stream_enabled   = true
  stream_view_type = "NEW_AND_OLD_IMAGES"

  attribute {
    name = "PK"
    type = "S"
  }

  attribute {
    name = "SK"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = module.data_key.arn
  }

  deletion_protection_enabled = true
  tags                        = var.tags
}

data "aws_dynamodb_table" "existing" {
  count = local.create_table ? 0 : 1
  name  = var.existing_table_name
}

# --- Archive bucket ------------------------------------------------------------------

resource "aws_s3_bucket" "archive" {
  #checkov:skip=CKV_AWS_18:Access logging would need a second bucket that itself fails this check; CloudTrail data events are the audit trail for this bucket.
  #checkov:skip=CKV_AWS_144:One region by design: the archive is a copy of mail already delivered; versioning and PITR-like lifecycle protect it.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events: the gateway writes, people read.
  count  = local.create_bucket ? 1 : 0
  bucket = local.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "archive" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.archive[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "archive" {
  count                   = local.create_bucket ? 1 : 0
  bucket                  = aws_s3_bucket.archive[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "archive" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.archive[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "archive" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.archive[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = module.data_key.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "archive" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.archive[0].id

  rule {
    id     = "expire-archived-mail"
    status = "Enabled"
    filter {
      prefix = "${var.archive_prefix}/"
    }
    expiration {
      days = var.email_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# TLS only. The deny lists the bucket's every action on purpose: a deny is the
# safe direction for a wildcard, and it is the one place this project uses one.
resource "aws_s3_bucket_policy" "archive" {
  count      = local.create_bucket ? 1 : 0
  bucket     = aws_s3_bucket.archive[0].id
  policy     = data.aws_iam_policy_document.archive_tls_only[0].json
  depends_on = [aws_s3_bucket_public_access_block.archive]
}

data "aws_iam_policy_document" "archive_tls_only" {
  count = local.create_bucket ? 1 : 0

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.archive[0].arn, "${aws_s3_bucket.archive[0].arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

data "aws_s3_bucket" "existing" {
  count  = local.create_bucket ? 0 : 1
  bucket = var.existing_bucket_name
}
