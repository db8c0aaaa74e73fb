"""Delivery tracking: what became of a message after Graph's 202.

A second line beside the send line, run by a worker (``manage.py msgraph_track`` or a
periodic Celery task), never by the sender::

    sources (message trace; NDRs in the sending mailboxes) -> events (one small type)
      -> correlate (our tracking id or the Message-ID -> the message we sent)
      -> record once -> signal delivery_event, outbox, suppression list

- :mod:`.events`: :class:`~.events.DeliveryEvent` and how a status code is read;
- :mod:`.ndr`: a non-delivery report (RFC 3464) read with the standard ``email`` package;

Who may import what: the modules here import the package's core (conf, graph, signals),
never the backend; the backend reads only the suppression list.
"""
