"""What the proxy, the CLI and the web app share: storage, reports, keys, plans, periods, budgets'
arithmetic, retention, GDPR requests, alert evaluation and notification (docs/architecture.md).

Nothing here imports mitmproxy or anything else in ``addon/`` outside ``addon/core/``.
"""
