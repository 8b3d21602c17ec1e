"""The run summary's latency reservoirs: bounded, and fed a batch at a time."""

from __future__ import annotations

from apex.summary import Reservoir


def test_a_batch_extends_the_reservoir_as_adding_its_values_one_by_one_would():
    one, batch = Reservoir(size=10), Reservoir(size=10)
    values = [float(v) for v in range(37)]
    for v in values:
        one.add(v)
    for part in (values[:4], values[4:15], values[15:15], values[15:]):  # room, then past the size
        batch.extend(part)
    assert batch.seen == one.seen == 37
    assert batch.values == one.values and len(batch.values) == 10


def test_the_reservoir_keeps_every_value_while_it_has_room():
    r = Reservoir(size=5)
    r.extend([1.0, 2.0, 3.0])
    assert (r.seen, r.values) == (3, [1.0, 2.0, 3.0])
    assert r.percentiles() == {"p50": 2.0, "p99": 3.0, "p999": 3.0, "max": 3.0}
