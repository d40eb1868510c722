# gateway_count hosts from one launch template, host i in subnet i (one AZ each),
# each with an Elastic IP, an A record <hostname_prefix><i+1>.<mail_domain> and
# its own encrypted spool volume. The spool volume is a resource of its own: a
# replaced instance gets the same volume (and the mail in it) back.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

data "aws_subnet" "host" {
  count = var.gateway_count
  id    = var.subnet_ids[count.index % length(var.subnet_ids)]
}

data "aws_ami" "debian" {
  count       = var.ami_id == "" ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian's official AWS account
  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }
  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  name      = "${var.name_prefix}-gateway-${var.environment}"
  hostnames = [for i in range(var.gateway_count) : "${var.hostname_prefix}${i + 1}.${var.mail_domain}"]
  # The first key of kms_key_arns (the data key) encrypts the volumes.
  volume_key_arn = var.kms_key_arns[0]
}

resource "aws_security_group" "gateway" {
  name        = local.name
  description = "sesmail-gateway hosts: SMTP from anywhere, metrics from the VPC"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = local.name })

  ingress {
    description      = "SMTP from the internet"
    from_port        = 25
    to_port          = 25
    protocol         = "tcp"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  ingress {
    description = "Prometheus /metrics and /healthz from inside the VPC"
    from_port   = var.metrics_port
    to_port     = var.metrics_port
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }

  dynamic "ingress" {
    for_each = length(var.ssh_cidr_blocks) > 0 ? [var.ssh_cidr_blocks] : []
    content {
      description = "SSH for ansible-playbook from the listed networks"
      from_port   = 22
      to_port     = 22
      protocol    = "tcp"
      cidr_blocks = ingress.value
    }
  }

  egress {
    description      = "HTTPS: AWS APIs, Gmail API, Let's Encrypt, package mirrors"
    from_port        = 443
    to_port          = 443
    protocol         = "tcp"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  egress {
    description      = "HTTP: Debian package mirrors"
    from_port        = 80
    to_port          = 80
    protocol         = "tcp"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  egress {
    description = "DNS (TCP) to the VPC resolver for SPF, DKIM and DMARC lookups"
    from_port   = 53
    to_port     = 53
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }

  egress {
    description = "DNS (UDP) to the VPC resolver for SPF, DKIM and DMARC lookups"
    from_port   = 53
    to_port     = 53
    protocol    = "udp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }
}

resource "aws_launch_template" "gateway" {
  name_prefix            = "${local.name}-"
  description            = "sesmail-gateway host"
  image_id               = var.ami_id != "" ? var.ami_id : data.aws_ami.debian[0].id
  instance_type          = var.instance_type
  key_name               = var.key_name != "" ? var.key_name : null
  ebs_optimized          = true
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.gateway.id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.gateway.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = local.volume_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = local.name, Role = "sesmail-gateway" })
  }

  tags = var.tags
}

resource "aws_instance" "gateway" {
  count                = var.gateway_count
  subnet_id            = data.aws_subnet.host[count.index].id
  ebs_optimized        = true
  monitoring           = true
  iam_instance_profile = aws_iam_instance_profile.gateway.name

  launch_template {
    id      = aws_launch_template.gateway.id
    version = aws_launch_template.gateway.latest_version
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted  = true
    kms_key_id = local.volume_key_arn
  }

  tags = merge(var.tags, { Name = local.hostnames[count.index], Hostname = local.hostnames[count.index] })
}

resource "aws_ebs_volume" "spool" {
  count             = var.gateway_count
  availability_zone = data.aws_subnet.host[count.index].availability_zone
  size              = var.spool_volume_size
  type              = "gp3"
  encrypted         = true
  kms_key_id        = local.volume_key_arn
  tags              = merge(var.tags, { Name = "${local.hostnames[count.index]}-spool", Hostname = local.hostnames[count.index] })

  # Accepted mail lives here until it is delivered: never destroyed by a plan.
  # To retire a host, drain its queue first, then remove this guard.
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_volume_attachment" "spool" {
  count                          = var.gateway_count
  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.spool[count.index].id
  instance_id                    = aws_instance.gateway[count.index].id
  stop_instance_before_detaching = true
}

resource "aws_eip" "gateway" {
  count  = var.gateway_count
  domain = "vpc"
  tags   = merge(var.tags, { Name = local.hostnames[count.index] })
}

resource "aws_eip_association" "gateway" {
  count         = var.gateway_count
  allocation_id = aws_eip.gateway[count.index].id
  instance_id   = aws_instance.gateway[count.index].id
}

resource "aws_route53_record" "host" {
  count   = var.gateway_count
  zone_id = var.zone_id
  name    = local.hostnames[count.index]
  type    = "A"
  ttl     = 300
  records = [aws_eip.gateway[count.index].public_ip]
}

resource "aws_cloudwatch_log_group" "gateway" {
  name              = "/sesmail-gateway/${var.environment}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.volume_key_arn
  tags              = var.tags
}
