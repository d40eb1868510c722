# One environment: storage (or the seed's), SES outbound, the Lambdas, the gateway
# hosts, their DNS and the monitoring, wired output to input.

locals {
  metrics_namespace = "SESMail/${var.environment}"
  token_ssm_path    = var.token_ssm_path != "" ? var.token_ssm_path : "/${var.name_prefix}/${var.environment}/gmail-forwarder/oauth"
  bounce_domain     = split("@", var.bounce_sender)[1]
}

module "storage" {
  source               = "../../modules/storage"
  name_prefix          = var.name_prefix
  environment          = var.environment
  existing_table_name  = var.existing_table_name
  existing_bucket_name = var.existing_bucket_name
  email_retention_days = var.email_retention_days
}

module "ses_outbound" {
  source      = "../../modules/ses_outbound"
  name_prefix = var.name_prefix
  environment = var.environment
  domains     = var.domains
}

module "lambdas" {
  source               = "../../modules/lambdas"
  name_prefix          = var.name_prefix
  environment          = var.environment
  table_name           = module.storage.table_name
  table_arn            = module.storage.table_arn
  table_stream_arn     = module.storage.table_stream_arn
  ses_events_topic_arn = module.ses_outbound.events_topic_arn
  metrics_namespace    = local.metrics_namespace
}

module "gateway" {
  source                    = "../../modules/gateway"
  name_prefix               = var.name_prefix
  environment               = var.environment
  gateway_count             = var.gateway_count
  vpc_id                    = var.vpc_id
  subnet_ids                = var.subnet_ids
  instance_type             = var.instance_type
  ami_id                    = var.ami_id
  key_name                  = var.key_name
  ssh_cidr_blocks           = var.ssh_cidr_blocks
  mail_domain               = var.mail_domain
  zone_id                   = var.domains[var.mail_domain]
  table_arn                 = module.storage.table_arn
  bucket_arn                = module.storage.bucket_arn
  archive_prefix            = module.storage.archive_prefix
  kms_key_arns              = [module.storage.kms_key_arn]
  token_ssm_path            = local.token_ssm_path
  bounce_sender             = var.bounce_sender
  ses_identity_arn          = module.ses_outbound.identity_arns[local.bounce_domain]
  ses_configuration_set_arn = module.ses_outbound.configuration_set_arn
  metrics_namespace         = local.metrics_namespace
}

module "dns" {
  source                 = "../../modules/dns"
  for_each               = var.domains
  name_prefix            = var.name_prefix
  environment            = var.environment
  domain                 = each.key
  zone_id                = each.value
  gateway_hostnames      = module.gateway.hostnames
  mx_mode                = var.mx_mode
  migration_mx_hostnames = var.migration_mx_hostnames
  mta_sts_mode           = var.mta_sts_mode
  manage_apex_txt        = var.manage_apex_txt
  spf_include_domains    = var.spf_include_domains
  spf_policy             = var.spf_policy
  dmarc_policy           = var.dmarc_policy

  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }
}

module "monitoring" {
  source                  = "../../modules/monitoring"
  name_prefix             = var.name_prefix
  environment             = var.environment
  metrics_namespace       = local.metrics_namespace
  alarm_emails            = var.alarm_emails
  gateway_count           = var.gateway_count
  gateway_instance_ids    = module.gateway.instance_ids
  dead_letter_queue_names = module.lambdas.dead_letter_queue_names
}
