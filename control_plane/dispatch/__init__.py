"""Dispatch: plan -> signed group setpoints -> acknowledgements and plan-vs-actual; operator
activations; frequency-response arming from the plan's reserve (see docs/dispatch.md)."""
