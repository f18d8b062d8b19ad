"""Registry: settings, SQL models and queries, artifact store, dataset parsing. Nothing of HTTP."""
