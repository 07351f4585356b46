"""The chaos run (``make chaos``): analysts keep working on the whole system on this machine
while a seeded schedule of faults runs, and afterwards nothing the hub promised is lost
(`chaos.run`). A two-minute version runs in ``make test``
(``tests/integration/test_chaos.py``)."""
