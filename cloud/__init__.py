"""The Packline cloud: ledger, orders, carriers, API, sync ingest, webhooks.

Composition roots (nothing is built at import time):

* :func:`cloud.api.create_app` — the merchant REST API (FastAPI);
* :class:`cloud.ingest.SqlCloudStore` — the database behind ``sync.link.CloudLink``;
* :class:`cloud.webhooks.WebhookDispatcher` — outbound, signed webhooks;
* :func:`cloud.loader.load_dir` — seed data; :func:`cloud.db.make_engine` / :func:`cloud.db.upgrade`.

This module imports nothing so that importing a sub-package stays cheap.
"""
