"""Send Django mail through Microsoft Graph.

Use ``EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"`` and an ``MSGRAPH_MAIL`` setting;
see the README and ``docs/`` for the three modes of operation.

What lives where (CONTRIBUTING.md follows a message through them): the send path's modules
here (``backend`` on top; ``mime``, ``resolvers``, ``routes``, ``graph``, ``auth`` below it;
``conf``, ``exceptions``, ``values``, ``retry`` at the bottom), ``limits/`` (Graph's
per-mailbox limits), ``outbox/`` (QueuedEmailBackend), ``tracking/`` (after Graph's 202),
``emulator/`` (Graph on 127.0.0.1, for tests), and Django's parts: ``checks``, ``admin``,
``views``, ``management/``. A module imports only its own layer and those below it, and no
import circle: tests/test_imports.py names the layers (settings and values; building and
sending one message; what is recorded at the send; the outbox; the backends; after Graph's
202; the emulator, which imports nothing of the product; Django's parts and the tools).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
