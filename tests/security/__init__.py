"""Adversarial HTTP/1.1 requests against the real proxy, checked byte for byte at a recording upstream."""
