output "credential_manager_function_name" {
  description = "Name of the credential-manager function."
  value       = aws_lambda_function.credential_manager.function_name
}

output "outbound_metrics_function_name" {
  description = "Name of the outbound-metrics function."
  value       = aws_lambda_function.outbound_metrics.function_name
}

output "credentials_kms_key_arn" {
  description = "Key of encrypted_credentials: grant kms:Decrypt on it to whoever runs smtp-users show --decrypt."
  value       = module.credentials_key.arn
}

output "smtp_user_boundary_arn" {
  description = "Permissions boundary of every SMTP user."
  value       = aws_iam_policy.smtp_user_boundary.arn
}

output "dead_letter_queue_arns" {
  description = "Dead-letter queues of the two functions."
  value = {
    credential_manager = aws_sqs_queue.credential_manager_dlq.arn
    outbound_metrics   = aws_sqs_queue.outbound_metrics_dlq.arn
  }
}

output "dead_letter_queue_names" {
  description = "Dead-letter queue names, for the monitoring module."
  value       = [aws_sqs_queue.credential_manager_dlq.name, aws_sqs_queue.outbound_metrics_dlq.name]
}
