"""Code both tiers import: parameters, image decoding, the command-line entry point."""
