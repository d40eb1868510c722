variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "ses-mail"
}

variable "environment" {
  description = "Environment name: test, prod, ..."
  type        = string
}

variable "table_name" {
  description = "Routing table holding the SMTP_USER# records (storage module)."
  type        = string
}

variable "table_arn" {
  description = "Routing table ARN (storage module)."
  type        = string
}

variable "table_stream_arn" {
  description = "The table's stream ARN (storage module)."
  type        = string
}

variable "ses_events_topic_arn" {
  description = "SNS topic of SES sending events (ses_outbound module)."
  type        = string
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the Outbound* metrics, SESMail/<env>."
  type        = string
}

variable "log_retention_days" {
  description = "Days the functions' logs are kept."
  type        = number
  default     = 365
}

variable "stream_retry_attempts" {
  description = "Times a failing stream batch is retried before its records go to the dead-letter queue."
  type        = number
  default     = 5
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
