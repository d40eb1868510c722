# Outbound SES: one identity per domain with Easy DKIM (RSA 2048) and a custom
# MAIL FROM, a configuration set (the identities' default, so SMTP clients need
# no header) that publishes Send, Delivery, Bounce, Complaint and Reject events
# to an encrypted SNS topic for the outbound-metrics Lambda.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  configuration_set = "${var.name_prefix}-outbound-${var.environment}"
  published_domains = { for domain, zone in var.domains : domain => zone if zone != "" }
  dkim_records = merge({}, [for domain, zone in local.published_domains : {
    for i in range(3) : "${domain}#${i}" => { domain = domain, zone = zone, index = i }
  }]...)
}

module "events_key" {
  source             = "../kms_key"
  alias              = "${var.name_prefix}-ses-events-${var.environment}"
  description        = "sesmail-gateway ${var.environment}: SES sending events topic"
  service_principals = ["ses.amazonaws.com"]
  tags               = var.tags
}

resource "aws_sns_topic" "events" {
  name              = "${var.name_prefix}-ses-events-${var.environment}"
  kms_master_key_id = module.events_key.arn
  tags              = var.tags
}

data "aws_iam_policy_document" "events" {
  statement {
    sid       = "SesPublishesFromThisAccount"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events.arn]
    principals {
      type        = "Service"
      identifiers = ["ses.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "events" {
  arn    = aws_sns_topic.events.arn
  policy = data.aws_iam_policy_document.events.json
}

resource "aws_sesv2_configuration_set" "outbound" {
  configuration_set_name = local.configuration_set

  delivery_options {
    tls_policy = var.require_tls ? "REQUIRE" : "OPTIONAL"
  }

  reputation_options {
    reputation_metrics_enabled = true
  }

  sending_options {
    sending_enabled = true
  }

  suppression_options {
    suppressed_reasons = ["BOUNCE", "COMPLAINT"]
  }

  tags = var.tags
}

resource "aws_sesv2_configuration_set_event_destination" "sns" {
  configuration_set_name = aws_sesv2_configuration_set.outbound.configuration_set_name
  event_destination_name = "outbound-metrics"

  event_destination {
    enabled              = true
    matching_event_types = ["SEND", "DELIVERY", "BOUNCE", "COMPLAINT", "REJECT"]
    sns_destination {
      topic_arn = aws_sns_topic.events.arn
    }
  }

  depends_on = [aws_sns_topic_policy.events]
}

resource "aws_sesv2_email_identity" "domain" {
  for_each               = var.domains
  email_identity         = each.key
  configuration_set_name = aws_sesv2_configuration_set.outbound.configuration_set_name

  dkim_signing_attributes {
    next_signing_key_length = "RSA_2048_BIT"
  }

  tags = var.tags
}

resource "aws_sesv2_email_identity_mail_from_attributes" "domain" {
  for_each               = var.domains
  email_identity         = aws_sesv2_email_identity.domain[each.key].email_identity
  mail_from_domain       = "${var.mail_from_subdomain}.${each.key}"
  behavior_on_mx_failure = "USE_DEFAULT_VALUE"
}

resource "aws_route53_record" "dkim" {
  for_each = local.dkim_records
  zone_id  = each.value.zone
  name     = "${aws_sesv2_email_identity.domain[each.value.domain].dkim_signing_attributes[0].tokens[each.value.index]}._domainkey.${each.value.domain}"
  type     = "CNAME"
  ttl      = 1800
  records  = ["${aws_sesv2_email_identity.domain[each.value.domain].dkim_signing_attributes[0].tokens[each.value.index]}.dkim.amazonses.com"]

  # Adopts the record a seed deployment (or a person) published before.
  allow_overwrite = true
}

resource "aws_route53_record" "mail_from_mx" {
  for_each = local.published_domains
  zone_id  = each.value
  name     = "${var.mail_from_subdomain}.${each.key}"
  type     = "MX"
  ttl      = 1800
  records  = ["10 feedback-smtp.${data.aws_region.current.name}.amazonses.com"]

  # Adopts the record a seed deployment (or a person) published before.
  allow_overwrite = true
}

resource "aws_route53_record" "mail_from_spf" {
  for_each = local.published_domains
  zone_id  = each.value
  name     = "${var.mail_from_subdomain}.${each.key}"
  type     = "TXT"
  ttl      = 1800
  records  = ["v=spf1 include:amazonses.com -all"]

  # Adopts the record a seed deployment (or a person) published before.
  allow_overwrite = true
}
