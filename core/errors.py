"""Errors of the search engine.

Every error a user can cause or fix is a `SearchAllError` whose message says what went wrong
and what to do. The adapters (CLI, Discord, Slack) turn these into replies in one place; any
other exception is a bug and is reported as an internal error.
"""

from __future__ import annotations


class SearchAllError(Exception):
    """Root of the errors whose message is meant for the user."""


class BadInputError(SearchAllError):
    """What the user sent cannot be searched with (the request is at fault, not the bot)."""


class EmptyQueryError(BadInputError):
    """The query has no text, image or audio term."""


class QuerySyntaxError(BadInputError):
    """The text form of a query could not be parsed."""


class UnsupportedMediaError(BadInputError):
    """A file is not an image or audio clip that can be decoded."""


class MediaTooLargeError(BadInputError):
    """A file exceeds a configured size, pixel or duration limit."""


class MediaTooShortError(BadInputError):
    """An audio clip is shorter than the configured minimum."""


class ConfigError(SearchAllError):
    """The configuration file or environment is invalid."""


class ModelError(SearchAllError):
    """The model cannot be built or loaded."""


class CheckpointError(ModelError):
    """The checkpoint cannot be downloaded, verified or loaded."""


class ModelMismatchError(SearchAllError):
    """A dataset was built with another model than the one asked to search it."""


class StoreError(SearchAllError):
    """The vector store cannot be opened, read or written."""


class EncoderUnavailableError(SearchAllError):
    """The encoder worker is not running (shut down or failed)."""


class NoPromptTextError(BadInputError):
    """A `filter:` word asked of a collection whose images came without prompt text."""

    def __init__(self) -> None:
        super().__init__(
            "this collection has no prompt text to filter on (its images came without prompts, "
            "as from a folder): search without the filter"
        )
