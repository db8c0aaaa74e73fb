"""The outbox behind :class:`~msgraph_mail.backend.QueuedEmailBackend`.

The caller builds an :class:`~msgraph_mail.outbox.envelope.Envelope` (the message's MIME and
id, never a secret), records it in a store and enqueues it with the engine chosen by
``QUEUE``; a worker calls :func:`~msgraph_mail.outbox.deliver.deliver`, which claims the
message, sends it and applies the outcome rules (sent, retry later, failed, unknown). The
engines (:mod:`msgraph_mail.outbox.tasks` for Django's tasks framework,
:mod:`msgraph_mail.outbox.celery`) are thin adapters over that one function.

Who may import what: the backend (to queue), the admin, ``msgraph_outbox`` and the tracker
(to settle an unknown message) import this package; its modules import the core below them
(conf, routes, graph, resolvers, mime). ``deliver`` and the engines still reach up to
``backend`` for ``MessageStatus`` and the signals' sender class.
"""

from .envelope import Envelope, build_envelope

__all__ = ["Envelope", "build_envelope"]
