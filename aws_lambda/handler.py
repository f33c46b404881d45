"""The Lambda handler's published name, `aws_lambda.handler.handler`; the runtime lives in
`flows.runtime.awslambda`."""

from flows.runtime.awslambda.handler import CLIENTS, handler

__all__ = ["CLIENTS", "handler"]
