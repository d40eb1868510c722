terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4"
    }
  }

  # State in S3: terraform init -backend-config=backend.hcl (bucket, key, region, dynamodb_table).
  backend "s3" {}
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      Project     = "sesmail-gateway"
      Environment = var.environment
    }
  }
}

# CloudFront certificates (the MTA-STS host) live in us-east-1.
provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
  default_tags {
    tags = {
      Project     = "sesmail-gateway"
      Environment = var.environment
    }
  }
}
