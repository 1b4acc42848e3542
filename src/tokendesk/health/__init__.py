"""Whether this instance lives (``/healthz``) and can serve (``/readyz``)."""
