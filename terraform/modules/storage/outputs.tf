output "table_name" {
  description = "Routing table name (created or existing)."
  value       = local.create_table ? aws_dynamodb_table.rules[0].name : data.aws_dynamodb_table.existing[0].name
}

output "table_arn" {
  description = "Routing table ARN."
  value       = local.create_table ? aws_dynamodb_table.rules[0].arn : data.aws_dynamodb_table.existing[0].arn
}

output "table_stream_arn" {
  description = "ARN of the table's stream (NEW_AND_OLD_IMAGES), for the credential manager."
  value       = local.create_table ? aws_dynamodb_table.rules[0].stream_arn : data.aws_dynamodb_table.existing[0].stream_arn
}

output "bucket_name" {
  description = "Archive bucket name (created or existing)."
  value       = local.create_bucket ? aws_s3_bucket.archive[0].id : data.aws_s3_bucket.existing[0].id
}

output "bucket_arn" {
  description = "Archive bucket ARN."
  value       = local.create_bucket ? aws_s3_bucket.archive[0].arn : data.aws_s3_bucket.existing[0].arn
}

output "archive_prefix" {
  description = "Key prefix of archived messages."
  value       = var.archive_prefix
}

output "rules_url" {
  description = "Value for the gateway's rules.url."
  value       = "dynamodb://${local.create_table ? aws_dynamodb_table.rules[0].name : data.aws_dynamodb_table.existing[0].name}"
}

output "archive_url" {
  description = "Value for the gateway's archive.url."
  value       = "s3://${local.create_bucket ? aws_s3_bucket.archive[0].id : data.aws_s3_bucket.existing[0].id}/${var.archive_prefix}"
}

output "kms_key_arn" {
  description = "Data key: archive SSE-KMS (archive.kms_key_id), the table, the gateway log group."
  value       = module.data_key.arn
}
