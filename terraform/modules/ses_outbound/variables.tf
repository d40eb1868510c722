variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "ses-mail"
}

variable "environment" {
  description = "Environment name: test, prod, ..."
  type        = string
}

variable "domains" {
  description = "Sending domains and their Route53 zone ids: domain => zone id. An empty zone id publishes nothing (see the dns_records output)."
  type        = map(string)
}

variable "mail_from_subdomain" {
  description = "Custom MAIL FROM is <mail_from_subdomain>.<domain> (the seed used bounce)."
  type        = string
  default     = "bounce"
}

variable "require_tls" {
  description = "SES delivers outbound mail only over TLS (REQUIRE); false lets it fall back to plain text (OPTIONAL) for receivers without STARTTLS."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
