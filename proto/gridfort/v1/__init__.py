"""gridfort.v1: generated code. Never edit ``*_pb2*`` files; run ``make proto``."""
