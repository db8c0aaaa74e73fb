"""Send Django mail through Microsoft Graph.

Use ``EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"`` and an ``MSGRAPH_MAIL`` setting;
see the README and ``docs/`` for the three modes of operation.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
