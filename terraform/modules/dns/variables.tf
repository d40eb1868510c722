variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "ses-mail"
}

variable "environment" {
  description = "Environment name: test, prod, ..."
  type        = string
}

variable "domain" {
  description = "A domain the gateway receives mail for."
  type        = string
}

variable "zone_id" {
  description = "Route53 zone of the domain."
  type        = string
}

variable "gateway_hostnames" {
  description = "Gateway host names (gateway module): one MX record each."
  type        = list(string)
}

variable "mx_mode" {
  description = <<-EOT
    Who receives the domain's mail, the one switch of the migration and of its rollback:
    "ses" (SES receipt rules only: the rollback), "ses-primary" (SES preferred, gateways as
    a lower-priority MX: the first step), "gateway-primary" (gateways preferred, SES as a
    fallback), "gateway" (gateways only: the end state).
  EOT
  type    = string
  default = "gateway"

  validation {
    condition     = contains(["ses", "ses-primary", "gateway-primary", "gateway"], var.mx_mode)
    error_message = "mx_mode must be one of: ses, ses-primary, gateway-primary, gateway."
  }
}

variable "ses_inbound_hostname" {
  description = "SES receiving endpoint used while mx_mode includes SES; empty means inbound-smtp.<region>.amazonaws.com."
  type        = string
  default     = ""
}

variable "migration_mx_hostnames" {
  description = "Additional MX hostnames listed in the MTA-STS policy during a migration (as in the seed: listed in the policy, never used for routing)."
  type        = list(string)
  default     = []
}

variable "mta_sts_mode" {
  description = "MTA-STS policy mode: testing first, enforce once TLS-RPT reports are clean, none to withdraw."
  type        = string
  default     = "testing"

  validation {
    condition     = contains(["testing", "enforce", "none"], var.mta_sts_mode)
    error_message = "mta_sts_mode must be one of: testing, enforce, none."
  }
}

variable "manage_apex_txt" {
  description = "Manage the domain's apex TXT record set (SPF plus extra_apex_txt_records); false leaves it alone and the SPF value is in the outputs."
  type        = bool
  default     = true
}

variable "extra_apex_txt_records" {
  description = "Other TXT values that live at the apex beside SPF (site verifications, ...)."
  type        = list(string)
  default     = []
}

variable "spf_include_domains" {
  description = "Domains included in SPF besides amazonses.com (e.g. _spf.google.com)."
  type        = list(string)
  default     = []
}

variable "spf_policy" {
  description = "SPF for everyone else: softfail (~all) while testing, fail (-all) in production."
  type        = string
  default     = "softfail"

  validation {
    condition     = contains(["softfail", "fail"], var.spf_policy)
    error_message = "spf_policy must be softfail or fail."
  }
}

variable "dmarc_policy" {
  description = "DMARC p= for the domain: none, quarantine or reject."
  type        = string
  default     = "quarantine"

  validation {
    condition     = contains(["none", "quarantine", "reject"], var.dmarc_policy)
    error_message = "dmarc_policy must be none, quarantine or reject."
  }
}

variable "dmarc_sp_policy" {
  description = "DMARC sp= for subdomains: none, quarantine or reject."
  type        = string
  default     = "reject"

  validation {
    condition     = contains(["none", "quarantine", "reject"], var.dmarc_sp_policy)
    error_message = "dmarc_sp_policy must be none, quarantine or reject."
  }
}

variable "dmarc_rua_prefix" {
  description = "Local part receiving DMARC aggregate reports (<prefix>@<domain>)."
  type        = string
  default     = "dmarc"
}

variable "tlsrpt_rua_prefix" {
  description = "Local part receiving TLS-RPT reports (<prefix>@<domain>)."
  type        = string
  default     = "tlsrpt"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
