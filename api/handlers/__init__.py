"""Thin handlers, reached by operationId: parse, call a service function, return."""
