"""One file per attribution method; each registers itself with ``@register_method``.
Every module in this package is imported when the registry is first used."""
