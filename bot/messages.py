"""What a user is told when a search fails: one place for every adapter.

A `SearchAllError` carries a message written for the user; it is shown as it is. Anything else
is a bug: the user gets a short apology with an incident id, the log gets the traceback.
"""

from __future__ import annotations

import logging
import uuid

from core.errors import SearchAllError

log = logging.getLogger(__name__)


class NotAllowedHereError(SearchAllError):
    """The bot is not enabled in this guild / channel (config allow-lists)."""

    def __init__(self) -> None:
        super().__init__("searching is not enabled in this channel")


def user_message(exc: BaseException) -> str:
    """The reply for `exc`; unexpected errors are logged with an id the user can quote."""
    if isinstance(exc, SearchAllError):
        text = str(exc)
        first_word = text.split(" ", 1)[0]
        # "the query is empty" -> "The query is empty"; a file name ("photo.png is ...") stays.
        return text[:1].upper() + text[1:] if first_word.isalpha() else text
    incident = uuid.uuid4().hex[:8]
    log.error("internal error %s", incident, exc_info=exc)
    return f"Something went wrong on our side (incident {incident}); please try again later."
