"""hoshu broker: SSH front door, control plane, session recorder."""
