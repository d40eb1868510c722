output "mx_hostnames" {
  description = "Gateway host names, one MX each."
  value       = module.gateway.hostnames
}

output "gateway_hosts" {
  description = "Per host: name, Elastic IP, private IP, instance id, AZ, spool volume (for the Ansible inventory)."
  value       = module.gateway.hosts
}

output "smtp_endpoint" {
  description = "SES SMTP endpoint for the credentials the credential manager creates."
  value       = module.ses_outbound.smtp_endpoint
}

output "dashboard_url" {
  description = "CloudWatch dashboard."
  value       = module.monitoring.dashboard_url
}

output "alarm_topic_arn" {
  description = "SNS topic of every alarm."
  value       = module.monitoring.alarm_topic_arn
}

output "records_to_publish" {
  description = "Every DNS record of the deployment (published in Route53 by these modules; listed for review and for zones elsewhere)."
  value       = concat(module.ses_outbound.dns_records, flatten([for domain in module.dns : domain.records]))
}

output "mta_sts_policies" {
  description = "MTA-STS policy text per domain."
  value       = { for name, domain in module.dns : name => domain.mta_sts_policy }
}

output "gateway_config" {
  description = "Values for the gateway's config (the Ansible role's variables)."
  value = {
    rules_url            = module.storage.rules_url
    archive_url          = module.storage.archive_url
    archive_kms_key_id   = module.storage.kms_key_arn
    gmail_tokens         = "ssm://${local.token_ssm_path}"
    cloudwatch_namespace = local.metrics_namespace
    aws_region           = var.region
    bounce_sender        = var.bounce_sender
    log_group            = module.gateway.log_group_name
  }
}

output "credentials_kms_key_arn" {
  description = "Key of the SMTP credentials: grant kms:Decrypt on it for smtp-users show --decrypt."
  value       = module.lambdas.credentials_kms_key_arn
}
