"""hoshu-gateway: the hospital-side, outbound-only connector."""
