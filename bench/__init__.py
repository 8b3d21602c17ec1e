"""``apex bench``: Apex measured against the floor, from a checkout only.

Not part of the installed package: the measurements need the repository's
scripts and recordings, and a user of the execution layer does not need them.
``bench.command`` is the entry point ``apex bench`` imports.
"""
