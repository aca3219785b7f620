"""The site's ClientApp: it serves the site store its SuperNode names (node config site-dir)."""

from site_client.client_app import build_client_app

app = build_client_app()
