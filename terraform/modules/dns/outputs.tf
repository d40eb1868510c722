output "mx_records" {
  description = "The domain's MX values as published (priority host)."
  value       = local.mx_records
}

output "mta_sts_policy" {
  description = "The MTA-STS policy served at https://mta-sts.<domain>/.well-known/mta-sts.txt."
  value       = local.mta_sts_policy
}

output "records" {
  description = "Every record this module publishes, for review or for a DNS not in Route53."
  value = [
    { name = var.domain, type = "MX", value = join(", ", local.mx_records) },
    { name = var.domain, type = "TXT", value = local.spf },
    { name = "_dmarc.${var.domain}", type = "TXT", value = local.dmarc },
    { name = "_smtp._tls.${var.domain}", type = "TXT", value = local.tlsrpt },
    { name = "_mta-sts.${var.domain}", type = "TXT", value = "v=STSv1; id=${local.mta_sts_id}" },
    { name = local.mta_sts_host, type = "A/AAAA (alias)", value = aws_cloudfront_distribution.mta_sts.domain_name },
  ]
}
