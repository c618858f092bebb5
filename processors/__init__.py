"""imgpipe."""
