output "hostnames" {
  description = "Gateway host names, one MX each."
  value       = local.hostnames
}

output "hosts" {
  description = "Per host: name, public (Elastic) IP, private IP, instance id, availability zone, spool volume id."
  value = [for i in range(var.gateway_count) : {
    hostname          = local.hostnames[i]
    public_ip         = aws_eip.gateway[i].public_ip
    private_ip        = aws_instance.gateway[i].private_ip
    instance_id       = aws_instance.gateway[i].id
    availability_zone = data.aws_subnet.host[i].availability_zone
    spool_volume_id   = aws_ebs_volume.spool[i].id
  }]
}

output "instance_ids" {
  description = "Instance ids, for status-check alarms."
  value       = aws_instance.gateway[*].id
}

output "security_group_id" {
  description = "Security group of the hosts."
  value       = aws_security_group.gateway.id
}

output "role_arn" {
  description = "IAM role of the instance profile."
  value       = aws_iam_role.gateway.arn
}

output "log_group_name" {
  description = "CloudWatch log group the hosts ship the JSON log to."
  value       = aws_cloudwatch_log_group.gateway.name
}
