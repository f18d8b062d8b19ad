"""The service layer shared by the API, the worker and the CLI: settings, SQL models and queries,
the job lifecycle and leases, tenants and keys, the artifact store, data set parsing and the
queue producer. Nothing of HTTP, nothing of torch."""
