"""The outbox behind :class:`~msgraph_mail.backend.QueuedEmailBackend`.

The caller builds an :class:`~msgraph_mail.outbox.envelope.Envelope` (the message's MIME and
id, never a secret), records it in a store and enqueues it with the engine chosen by
``QUEUE``; a worker calls :func:`~msgraph_mail.outbox.deliver.deliver`, which claims the
message, sends it and applies the outcome rules (sent, retry later, failed, unknown). The
engines (:mod:`msgraph_mail.outbox.tasks` for Django's tasks framework,
:mod:`msgraph_mail.outbox.celery`) are thin adapters over that one function.

Who may import what: the backends (``QueuedEmailBackend`` queues), the tracker (to settle an
unknown message), the admin and ``msgraph_outbox`` import this package; its modules import
only the layers below it (conf, values, routes, graph, resolvers, mime, the tracking records),
never ``backend``: the worker names its signals' sender by dotted path
(:data:`~msgraph_mail.outbox.deliver.QUEUED_BACKEND`) and takes ``MessageStatus`` from
:mod:`msgraph_mail.values`.
"""

from .envelope import Envelope, build_envelope

__all__ = ["Envelope", "build_envelope"]
