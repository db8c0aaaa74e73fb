"""Django's management commands of the package (``commands/``): ``msgraph_diagnose``,
``msgraph_outbox``, ``msgraph_track``, ``msgraph_subscriptions``, ``msgraph_suppressions``.

Who may import what: nothing imports them; they import the package's public modules
(mailers, conf, diagnose, outbox, tracking) and hold no logic of their own beyond the output.
"""
