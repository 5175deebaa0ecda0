"""Commands: signed setpoints from the control plane to edges."""
