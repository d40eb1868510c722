# Alarms to one encrypted SNS topic, and a dashboard.
#
# Daemon metrics read here (metrics.cloudwatch_namespace): MessagesAccepted (no
# dimension), QueueDepth by State (incoming, deferred, held, dead, rejected),
# Deliveries by Action and Outcome (delivered, deferred, held, failed), and the
# seed's TokenSecondsUntilExpiration by Account. Metrics with dimensions that vary
# (Action, Account) are read with Metrics Insights queries, so every value counts.

data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  prefix = "${var.name_prefix}-${var.environment}"
  queue_alarms = {
    queue-depth  = { state = "deferred", threshold = var.queue_depth_threshold, periods = 3, text = "Deferred messages above ${var.queue_depth_threshold} for 15 minutes" }
    dead-letters = { state = "dead", threshold = 0, periods = 1, text = "A message is in the dead-letter state: queue list --state dead" }
    held         = { state = "held", threshold = 0, periods = 2, text = "Messages held for an expired Gmail token: token status, then token refresh" }
  }
  delivery_alarms = {
    delivery-failures  = { outcome = "failed", threshold = 0, text = "A delivery failed permanently in the last 15 minutes: queue list --state dead" }
    delivery-deferrals = { outcome = "deferred", threshold = var.delivery_deferral_threshold, text = "More than ${var.delivery_deferral_threshold} delivery attempts deferred in 15 minutes" }
  }
  token_alarms = {
    token-expiry-24h = { seconds = 86400, text = "A Gmail refresh token expires within 24 hours: token refresh --account ..." }
    token-expiry-6h  = { seconds = 21600, text = "A Gmail refresh token expires within 6 hours: token refresh --account ..." }
  }
  rate_alarms = {
    outbound-bounce-rate    = { metric = "OutboundBounce", threshold = var.bounce_rate_threshold, text = "Outbound bounce rate above ${var.bounce_rate_threshold * 100} %" }
    outbound-complaint-rate = { metric = "OutboundComplaint", threshold = var.complaint_rate_threshold, text = "Outbound complaint rate above ${var.complaint_rate_threshold * 100} %" }
  }
}

module "alarm_key" {
  source             = "../kms_key"
  alias              = "${local.prefix}-alarms"
  description        = "sesmail-gateway ${var.environment}: alarm topic"
  service_principals = ["cloudwatch.amazonaws.com"]
  tags               = var.tags
}

resource "aws_sns_topic" "alarms" {
  name              = "${local.prefix}-alarms"
  kms_master_key_id = module.alarm_key.arn
  tags              = var.tags
}

resource "aws_sns_topic_subscription" "alarm_email" {
  for_each  = toset(var.alarm_emails)
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

resource "aws_cloudwatch_metric_alarm" "token_expiry" {
  for_each            = local.token_alarms
  alarm_name          = "${local.prefix}-${each.key}"
  alarm_description   = each.value.text
  comparison_operator = "LessThanThreshold"
  threshold           = each.value.seconds
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags

  metric_query {
    id          = "soonest"
    expression  = "SELECT MIN(TokenSecondsUntilExpiration) FROM \"${var.metrics_namespace}\""
    period      = 300
    return_data = true
  }
}

resource "aws_cloudwatch_metric_alarm" "queue" {
  for_each            = local.queue_alarms
  alarm_name          = "${local.prefix}-${each.key}"
  alarm_description   = each.value.text
  namespace           = var.metrics_namespace
  metric_name         = "QueueDepth"
  dimensions          = { State = each.value.state }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = each.value.periods
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "delivery" {
  for_each            = local.delivery_alarms
  alarm_name          = "${local.prefix}-${each.key}"
  alarm_description   = each.value.text
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags

  metric_query {
    id          = "attempts"
    expression  = "SELECT SUM(Deliveries) FROM SCHEMA(\"${var.metrics_namespace}\", Action, Outcome) WHERE Outcome = '${each.value.outcome}'"
    period      = 900
    return_data = true
  }
}

resource "aws_cloudwatch_metric_alarm" "no_mail" {
  alarm_name          = "${local.prefix}-no-mail-accepted"
  alarm_description   = "No message accepted for ${var.no_mail_hours} hours: MX, DNS or the hosts"
  namespace           = var.metrics_namespace
  metric_name         = "MessagesAccepted"
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = var.no_mail_hours
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "outbound_rate" {
  for_each            = local.rate_alarms
  alarm_name          = "${local.prefix}-${each.key}"
  alarm_description   = each.value.text
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  evaluation_periods  = 2
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags

  metric_query {
    id          = "rate"
    expression  = "IF(sent > 0, events / sent, 0)"
    label       = each.key
    return_data = true
  }

  metric_query {
    id = "events"
    metric {
      namespace   = var.metrics_namespace
      metric_name = each.value.metric
      stat        = "Sum"
      period      = 900
    }
  }

  metric_query {
    id = "sent"
    metric {
      namespace   = var.metrics_namespace
      metric_name = "OutboundSend"
      stat        = "Sum"
      period      = 900
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "instance_status" {
  count               = var.gateway_count
  alarm_name          = "${local.prefix}-gateway-${count.index + 1}-status-check"
  alarm_description   = "Instance or system status check failing on gateway ${count.index + 1}"
  namespace           = "AWS/EC2"
  metric_name         = "StatusCheckFailed"
  dimensions          = { InstanceId = var.gateway_instance_ids[count.index] }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

# A host whose hardware fails is recovered onto new hardware with the same
# instance id, private IP, Elastic IP and volumes: the spool comes back with it.
resource "aws_cloudwatch_metric_alarm" "instance_recover" {
  count               = var.gateway_count
  alarm_name          = "${local.prefix}-gateway-${count.index + 1}-recover"
  alarm_description   = "System status check failing on gateway ${count.index + 1}: EC2 recovers the instance"
  namespace           = "AWS/EC2"
  metric_name         = "StatusCheckFailed_System"
  dimensions          = { InstanceId = var.gateway_instance_ids[count.index] }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 2
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  alarm_actions       = ["arn:${data.aws_partition.current.partition}:automate:${data.aws_region.current.name}:ec2:recover", aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "lambda_dead_letters" {
  for_each            = toset(var.dead_letter_queue_names)
  alarm_name          = "${each.value}-not-empty"
  alarm_description   = "An event the Lambda could not process is in ${each.value}"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = "${local.prefix}-mail"
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title   = "Inbound: accepted and delivered"
          region  = data.aws_region.current.name
          stat    = "Sum"
          period  = 300
          metrics = concat(
            [[var.metrics_namespace, "MessagesAccepted", { id = "accepted" }]],
            [for outcome in ["delivered", "deferred", "held", "failed"] : [{
              expression = "SELECT SUM(Deliveries) FROM SCHEMA(\"${var.metrics_namespace}\", Action, Outcome) WHERE Outcome = '${outcome}'"
              label      = outcome
              id         = outcome
            }]],
          )
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title   = "Queue by state"
          region  = data.aws_region.current.name
          stat    = "Maximum"
          period  = 300
          metrics = [for state in ["incoming", "deferred", "held", "dead", "rejected"] : [var.metrics_namespace, "QueueDepth", "State", state]]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title   = "Gmail token: seconds left (soonest)"
          region  = data.aws_region.current.name
          period  = 300
          metrics = [[{ expression = "SELECT MIN(TokenSecondsUntilExpiration) FROM \"${var.metrics_namespace}\"", id = "tokens" }]]
        }
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title   = "Outbound (SES)"
          region  = data.aws_region.current.name
          stat    = "Sum"
          period  = 300
          metrics = [for name in ["OutboundSend", "OutboundDelivery", "OutboundBounce", "OutboundBounceHard", "OutboundBounceSoft", "OutboundComplaint", "OutboundReject"] : [var.metrics_namespace, name]]
        }
      },
      {
        type = "alarm", x = 0, y = 12, width = 24, height = 4
        properties = {
          title = "Alarms"
          alarms = concat(
            [for alarm in aws_cloudwatch_metric_alarm.token_expiry : alarm.arn],
            [for alarm in aws_cloudwatch_metric_alarm.queue : alarm.arn],
            [for alarm in aws_cloudwatch_metric_alarm.delivery : alarm.arn],
            [aws_cloudwatch_metric_alarm.no_mail.arn],
            [for alarm in aws_cloudwatch_metric_alarm.outbound_rate : alarm.arn],
          )
        }
      },
    ]
  })
}
