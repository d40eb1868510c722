variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "ses-mail"
}

variable "environment" {
  description = "Environment name: test, prod, ..."
  type        = string
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the daemon's and the Lambda's metrics, SESMail/<env>."
  type        = string
}

variable "alarm_emails" {
  description = "Addresses subscribed to the alarm topic (each confirms by mail)."
  type        = list(string)
  default     = []
}

variable "gateway_instance_ids" {
  description = "Gateway instances (gateway module) for status-check alarms and automatic recovery."
  type        = list(string)
}

variable "gateway_count" {
  description = "Number of gateway instances (known at plan time, unlike their ids)."
  type        = number
}

variable "dead_letter_queue_names" {
  description = "The Lambdas' dead-letter queues (lambdas module); a message in one raises an alarm."
  type        = list(string)
}

variable "queue_depth_threshold" {
  description = "Deferred messages above which the queue-depth alarm fires."
  type        = number
  default     = 100
}

variable "delivery_deferral_threshold" {
  description = "Deferred delivery attempts in 15 minutes above which the delivery-deferrals alarm fires."
  type        = number
  default     = 20
}

variable "no_mail_hours" {
  description = "Hours without one accepted message after which the no-mail alarm fires."
  type        = number
  default     = 6
}

variable "bounce_rate_threshold" {
  description = "Outbound bounce rate that raises an alarm (SES reviews accounts above 5 %)."
  type        = number
  default     = 0.05
}

variable "complaint_rate_threshold" {
  description = "Outbound complaint rate that raises an alarm (SES reviews accounts above 0.1 %)."
  type        = number
  default     = 0.001
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
