"""The AWS Lambda deployment's entry point (`aws_lambda.handler.handler`, the name the
function is configured with); the code is `flows.runtime.awslambda` (docs/lambda.md)."""
