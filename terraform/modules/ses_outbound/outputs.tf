output "identity_arns" {
  description = "SES identity ARN per domain."
  value       = { for domain, identity in aws_sesv2_email_identity.domain : domain => identity.arn }
}

output "configuration_set_name" {
  description = "Configuration set applied to every identity."
  value       = aws_sesv2_configuration_set.outbound.configuration_set_name
}

output "configuration_set_arn" {
  description = "Configuration set ARN."
  value       = aws_sesv2_configuration_set.outbound.arn
}

output "events_topic_arn" {
  description = "SNS topic receiving the SES sending events."
  value       = aws_sns_topic.events.arn
}

output "smtp_endpoint" {
  description = "SES SMTP endpoint of this region (ports 587 STARTTLS, 465 TLS)."
  value       = "email-smtp.${data.aws_region.current.name}.amazonaws.com"
}

output "dns_records" {
  description = "Records SES needs per domain (DKIM CNAMEs, MAIL FROM MX and SPF): published in Route53 where a zone id was given, to be added by hand otherwise."
  value = flatten([for domain, identity in aws_sesv2_email_identity.domain : concat(
    [for token in identity.dkim_signing_attributes[0].tokens : {
      name  = "${token}._domainkey.${domain}"
      type  = "CNAME"
      value = "${token}.dkim.amazonses.com"
    }],
    [
      { name = "${var.mail_from_subdomain}.${domain}", type = "MX", value = "10 feedback-smtp.${data.aws_region.current.name}.amazonses.com" },
      { name = "${var.mail_from_subdomain}.${domain}", type = "TXT", value = "v=spf1 include:amazonses.com -all" },
    ],
  )])
}
