"""AiSpendTrack's core: the mitmproxy addon, the provider parsers and the store.

The CLI (`cli/`) and the web app (`web/`) import from here; nothing here imports them.
"""
