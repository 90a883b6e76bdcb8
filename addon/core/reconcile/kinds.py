"""What a reconciliation line counts, on both sides: our token kinds, and the units of the APIs
billed in other units (OpenAI's images and audio usage endpoints count them). Apart from
``__init__`` so that the providers' readers can name them too."""

KINDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
         "web_search_requests", "images", "audio_seconds", "characters")
UNITS = KINDS[-3:]
