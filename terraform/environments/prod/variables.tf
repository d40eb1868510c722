variable "environment" {
  description = "Environment name, part of every resource name and of the metrics namespace SESMail/<environment>."
  type        = string
  default     = "prod"
}

variable "region" {
  description = "AWS region of the deployment (and of SES)."
  type        = string
  default     = "ap-southeast-2"
}

variable "name_prefix" {
  description = "Prefix of every resource name; ses-mail matches a seed deployment."
  type        = string
  default     = "ses-mail"
}

variable "domains" {
  description = "Domains the gateway receives (and SES sends) mail for, each with its Route53 zone id."
  type        = map(string)
}

variable "mail_domain" {
  description = "Domain of the gateway host names (mx1.<mail_domain>, ...); one of domains."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the gateway hosts."
  type        = string
}

variable "subnet_ids" {
  description = "Public subnets, one per availability zone."
  type        = list(string)
}

variable "gateway_count" {
  description = "Number of gateway hosts."
  type        = number
  default     = 2
}

variable "instance_type" {
  description = "EC2 instance type of the gateway hosts."
  type        = string
  default     = "t3.small"
}

variable "ami_id" {
  description = "AMI of the gateway hosts; empty for the newest Debian 12."
  type        = string
  default     = ""
}

variable "key_name" {
  description = "EC2 key pair for ansible over SSH; empty for none."
  type        = string
  default     = ""
}

variable "ssh_cidr_blocks" {
  description = "Networks allowed to SSH to the hosts (ansible); empty for none."
  type        = list(string)
  default     = []
}

variable "existing_table_name" {
  description = "A seed deployment's routing table to use instead of creating one."
  type        = string
  default     = ""
}

variable "existing_bucket_name" {
  description = "A seed deployment's email bucket to archive into instead of creating one."
  type        = string
  default     = ""
}

variable "email_retention_days" {
  description = "Days archived messages are kept."
  type        = number
  default     = 90
}

variable "token_ssm_path" {
  description = "SSM path of the Gmail tokens; empty means the seed's /<name_prefix>/<environment>/gmail-forwarder/oauth."
  type        = string
  default     = ""
}

variable "bounce_sender" {
  description = "Address DSNs are sent from (bounce.sender); its domain must be one of domains."
  type        = string
}

variable "mx_mode" {
  description = "ses | ses-primary | gateway-primary | gateway: who receives mail (see modules/dns). Rolling back is setting it to ses."
  type        = string
  default     = "ses"
}

variable "migration_mx_hostnames" {
  description = "Extra MX host names listed in the MTA-STS policy during a migration."
  type        = list(string)
  default     = []
}

variable "mta_sts_mode" {
  description = "MTA-STS policy mode: testing, enforce or none."
  type        = string
  default     = "testing" # enforce once TLS-RPT reports are clean
}

variable "manage_apex_txt" {
  description = "Manage each domain's apex TXT (SPF) record set."
  type        = bool
  default     = true
}

variable "spf_include_domains" {
  description = "Domains included in SPF besides amazonses.com."
  type        = list(string)
  default     = []
}

variable "spf_policy" {
  description = "softfail or fail."
  type        = string
  default     = "fail"
}

variable "dmarc_policy" {
  description = "DMARC p= of the domains."
  type        = string
  default     = "quarantine"
}

variable "alarm_emails" {
  description = "Addresses that receive the alarms."
  type        = list(string)
  default     = []
}
