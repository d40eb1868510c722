output "alarm_topic_arn" {
  description = "SNS topic every alarm notifies."
  value       = aws_sns_topic.alarms.arn
}

output "dashboard_name" {
  description = "CloudWatch dashboard name."
  value       = aws_cloudwatch_dashboard.main.dashboard_name
}

output "dashboard_url" {
  description = "Console URL of the dashboard."
  value       = "https://${data.aws_region.current.name}.console.aws.amazon.com/cloudwatch/home?region=${data.aws_region.current.name}#dashboards:name=${aws_cloudwatch_dashboard.main.dashboard_name}"
}

output "alarm_names" {
  description = "Every alarm's name."
  value = concat(
    [for alarm in aws_cloudwatch_metric_alarm.token_expiry : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.queue : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.delivery : alarm.alarm_name],
    [aws_cloudwatch_metric_alarm.no_mail.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.outbound_rate : alarm.alarm_name],
    aws_cloudwatch_metric_alarm.instance_status[*].alarm_name,
    aws_cloudwatch_metric_alarm.instance_recover[*].alarm_name,
    [for alarm in aws_cloudwatch_metric_alarm.lambda_dead_letters : alarm.alarm_name],
  )
}
