"""AWS Lambda functions deployed beside the gateway; each module stands alone (no package imports)."""
