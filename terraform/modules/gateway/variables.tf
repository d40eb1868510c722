variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "ses-mail"
}

variable "environment" {
  description = "Environment name: test, prod, ..."
  type        = string
}

variable "gateway_count" {
  description = "Number of gateway hosts, each in the next subnet (AZ) of subnet_ids, with its own EIP and MX record."
  type        = number
  default     = 2

  validation {
    condition     = var.gateway_count >= 1 && var.gateway_count <= 10
    error_message = "gateway_count must be between 1 and 10."
  }
}

variable "vpc_id" {
  description = "VPC of the gateway hosts."
  type        = string
}

variable "subnet_ids" {
  description = "Public subnets, one per availability zone; host i goes to subnet i modulo their number."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "At least one subnet is needed."
  }
}

variable "instance_type" {
  description = "EC2 instance type of a gateway host."
  type        = string
  default     = "t3.small"
}

variable "ami_id" {
  description = "AMI of the gateway hosts; empty means the newest official Debian 12 image."
  type        = string
  default     = ""
}

variable "key_name" {
  description = "EC2 key pair for SSH (used by ansible-playbook); empty for none."
  type        = string
  default     = ""
}

variable "ssh_cidr_blocks" {
  description = "Networks allowed to reach SSH (ansible); empty opens nothing but SMTP."
  type        = list(string)
  default     = []
}

variable "hostname_prefix" {
  description = "Gateway host names are <hostname_prefix><n>.<mail_domain>: mx1.example.com, mx2.example.com, ..."
  type        = string
  default     = "mx"
}

variable "mail_domain" {
  description = "Domain under which the gateway host names (and their A records) live."
  type        = string
}

variable "zone_id" {
  description = "Route53 zone of mail_domain, for the hosts' A records."
  type        = string
}

variable "root_volume_size" {
  description = "Root volume size in GiB."
  type        = number
  default     = 16
}

variable "spool_volume_size" {
  description = "Spool volume size in GiB (queue, journal, dead letters)."
  type        = number
  default     = 20
}

variable "metrics_port" {
  description = "Port of the gateway's /metrics and /healthz, reachable from inside the VPC only."
  type        = number
  default     = 9101
}

variable "table_arn" {
  description = "Routing table ARN (storage module)."
  type        = string
}

variable "bucket_arn" {
  description = "Archive bucket ARN (storage module)."
  type        = string
}

variable "archive_prefix" {
  description = "Archive key prefix (storage module)."
  type        = string
}

variable "kms_key_arns" {
  description = "KMS keys the gateway encrypts and decrypts with: the data key, and the token parameters' key when it is not aws/ssm."
  type        = list(string)
}

variable "token_ssm_path" {
  description = "SSM path of the Gmail OAuth tokens (gmail.tokens = ssm://<path>)."
  type        = string

  validation {
    condition     = can(regex("^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.token_ssm_path))
    error_message = "token_ssm_path must be an absolute SSM path such as /ses-mail/prod/gmail-forwarder/oauth."
  }
}

variable "bounce_sender" {
  description = "Envelope and From address of DSNs (bounce.sender); the only address the hosts may send as."
  type        = string
}

variable "ses_identity_arn" {
  description = "ARN of the SES identity the bounce sender belongs to (ses_outbound module)."
  type        = string
}

variable "ses_configuration_set_arn" {
  description = "ARN of the SES configuration set applied to the identity (ses_outbound module)."
  type        = string
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the daemon writes to (metrics.cloudwatch_namespace)."
  type        = string
}

variable "log_retention_days" {
  description = "Days the gateway's JSON log is kept in CloudWatch Logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
