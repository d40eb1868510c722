variable "name_prefix" {
  description = "Prefix of every resource name (the seed deployment used ses-mail)."
  type        = string
  default     = "ses-mail"
}

variable "environment" {
  description = "Environment name: test, prod, ..."
  type        = string
}

variable "existing_table_name" {
  description = "Use this existing DynamoDB table (a seed deployment's routing table) instead of creating one. It must have PK/SK keys and a NEW_AND_OLD_IMAGES stream."
  type        = string
  default     = ""
}

variable "existing_bucket_name" {
  description = "Use this existing S3 bucket (a seed deployment's email bucket) for the archive instead of creating one."
  type        = string
  default     = ""
}

variable "archive_prefix" {
  description = "Key prefix of archived messages: objects are <prefix>/<yyyy>/<mm>/<dd>/<queue-id>.eml."
  type        = string
  default     = "archive"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/-]*[A-Za-z0-9]$", var.archive_prefix))
    error_message = "archive_prefix must be a plain key prefix without leading or trailing slashes."
  }
}

variable "email_retention_days" {
  description = "Days an archived message is kept before it expires (the seed kept 90)."
  type        = number
  default     = 90

  validation {
    condition     = var.email_retention_days >= 1
    error_message = "email_retention_days must be at least 1."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
