"""``rundispatcher``: see :mod:`.rundispatcher`."""
