"""The worker domain: plain Python, no I/O. Changes return the events they caused."""
