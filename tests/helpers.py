"""Small helpers shared by the test modules."""

from __future__ import annotations

from email.message import MIMEPart
from email.mime.image import MIMEImage
from typing import Any

import django


def inline_image(data: bytes, filename: str, cid: str) -> Any:
    """An inline image part, built the way each Django version wants it."""
    if django.VERSION >= (6, 0):  # MIMEBase attachments are deprecated from 6.0 on
        part = MIMEPart()
        part.set_content(
            data, "image", "png", disposition="inline", filename=filename, cid=f"<{cid}>"
        )
        return part
    image = MIMEImage(data, "png")
    image.add_header("Content-ID", f"<{cid}>")
    image.add_header("Content-Disposition", "inline", filename=filename)
    return image
