"""Defaults of the stem naming options, importable without torch (the parser shows them)."""

#: Output path template below ``--out``.
DEFAULT_TEMPLATE = "{model}/{track}/{stem}.{ext}"
#: How ``no_STEM`` is made with ``--two-stems``: sum of the others, mixture minus STEM, or
#: not written.
OTHER_METHODS = ("add", "minus", "none")
