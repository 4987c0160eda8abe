"""The web tier (Flask pages and JSON API); it arrives with the job service."""
