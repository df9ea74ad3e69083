"""Report templates: the system-metadata template (JSON) and the HTML stylesheet."""
