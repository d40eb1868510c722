variable "alias" {
  description = "Alias name without the alias/ prefix, e.g. ses-mail-data-prod."
  type        = string
}

variable "description" {
  description = "What the key protects."
  type        = string
}

variable "service_principals" {
  description = "AWS service principals (e.g. logs.<region>.amazonaws.com, ses.amazonaws.com) allowed to use the key on behalf of this account."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for the key."
  type        = map(string)
  default     = {}
}
