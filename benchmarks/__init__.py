"""The timing harness, its reporters, and committed results from real runs."""
