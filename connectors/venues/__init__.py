"""Venues take an Order and return a Fill. Two failures are kept apart:
``VenueDown`` (retry later: the stream entry stays pending) and ``Rejected``
(the venue said no: a terminal outcome)."""


class VenueDown(Exception):
    pass


class Rejected(Exception):
    pass
