"""A `bot.common.reply.Reply` as one Discord message: text, up to 10 embeds, image files, buttons.

Each result is an embed with its rank, score, "+N similar" and shortened prompt. Its image is
the result's URL when that is http(s) (S3, public or presigned); otherwise the JPEG kept in the
dataset is uploaded and the embed points at it (`attachment://result-N.jpg`). Uploads must fit
the channel's upload limit (`Interaction.filesize_limit`) all together: each file gets an equal
share of what is left, a larger one is downscaled to fit, and one that still does not fit is
left out (its embed says so). Buttons: "More like #N" per result (rows of 5) and "Next page".

The buttons' custom ids are `bot.common.reply` ids, which carry everything needed to run them,
so they are registered as a `DynamicItem`: any bot instance, including one started after the
reply was sent, turns a press into an `Action` and dispatches it as the `search_action` event,
which the cog (`bot.discord.cog`) listens to.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import discord
from PIL import Image

from bot.common.reply import Action, NextPage, Reply, ReplyImage, decode_action, is_web_url

MAX_EMBEDS = 10  # per message, Discord's limit (and its limit on files)
BUTTONS_PER_ROW = 5
EMBED_COLOUR = discord.Colour(0x5865F2)
DOWNSCALE_SIDES = (1024, 768, 512, 384, 256, 160, 96)
NOT_ATTACHED = "image not attached: it does not fit this channel's upload limit"
NO_IMAGE = "image not available"
BUTTON_ID = re.compile(r"sa:(?:more|page):[0-9a-f:]{1,80}|sa:mem:[0-9A-Za-z_.-]{1,40}/[0-9A-Za-z_.-]{1,40}")
ACTION_EVENT = "search_action"  # the cog's `on_search_action` listener runs a pressed button


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=BUTTON_ID):
    def __init__(self, action: Action, *, label: str, row: int | None = None):
        style = discord.ButtonStyle.primary if isinstance(action, NextPage) else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=action.encode()), row=row)
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> ActionButton:
        action = decode_action(match.group(0))
        if action is None:
            raise ValueError(f"not a search button: {match.group(0)!r}")
        return cls(action, label=item.label or "")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        interaction.client.dispatch(ACTION_EVENT, interaction, self.action)


def upload_name(image: ReplyImage) -> str:
    return f"result-{image.rank}.jpg"


def shown_images(reply: Reply) -> list[ReplyImage]:
    return reply.images[:MAX_EMBEDS]


def needs_upload(reply: Reply) -> list[ReplyImage]:
    """The shown results whose image must be uploaded (no http(s) URL)."""
    return [image for image in shown_images(reply) if not is_web_url(image.item.url)]


def downscale_jpeg(data: bytes, max_bytes: int) -> bytes | None:
    """`data` re-encoded smaller until it fits `max_bytes`; None when even a thumbnail does not."""
    if max_bytes <= 0:
        return None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            picture = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    largest = max(picture.size)
    for side in [largest, *(s for s in DOWNSCALE_SIDES if s < largest)]:
        smaller = picture.copy()
        smaller.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        smaller.save(out, format="JPEG", quality=80, optimize=True)
        if out.tell() <= max_bytes:
            return out.getvalue()
    return None


def fit_uploads(files: Sequence[tuple[str, bytes]], budget: int) -> dict[str, bytes]:
    """The files to upload within `budget` bytes in total, in order, downscaled when needed.

    Each file may use an equal share of the budget left (so a small file leaves more for the
    next); a file over its share is downscaled, and left out when that fails.
    """
    kept: dict[str, bytes] = {}
    left = budget
    for index, (name, data) in enumerate(files):
        share = left // (len(files) - index)
        chosen = data if len(data) <= share else downscale_jpeg(data, share)
        if chosen is not None:
            kept[name] = chosen
            left -= len(chosen)
    return kept


@dataclass
class RenderedReply:
    """What one message sends; `send_kwargs` builds fresh files and view for each send."""

    content: str
    embeds: list[discord.Embed]
    uploads: dict[str, bytes]
    buttons: list[tuple[str, Action, int]] = field(default_factory=list)  # label, action, row

    def files(self) -> list[discord.File]:
        return [discord.File(io.BytesIO(data), filename=name) for name, data in self.uploads.items()]

    def view(self) -> discord.ui.View | None:
        """The buttons (must be built inside the event loop); None when there are none."""
        if not self.buttons:
            return None
        view = discord.ui.View(timeout=None)
        for label, action, row in self.buttons:
            view.add_item(ActionButton(action, label=label, row=row))
        return view

    def send_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "content": self.content,
            "embeds": self.embeds,
            "allowed_mentions": discord.AllowedMentions.none(),
        }
        if self.uploads:
            kwargs["files"] = self.files()
        view = self.view()
        if view is not None:
            kwargs["view"] = view
        return kwargs

    def edit_kwargs(self) -> dict[str, Any]:
        """For editing a message in place: its files and buttons are replaced."""
        view = self.view()
        return {
            "content": self.content,
            "embeds": self.embeds,
            "attachments": self.files(),
            "view": view if view is not None else discord.ui.View(),
            "allowed_mentions": discord.AllowedMentions.none(),
        }


def _embed(image: ReplyImage, uploads: Mapping[str, bytes], unavailable: Collection[str]) -> discord.Embed:
    title = f"#{image.rank} · score {image.score}"
    if image.similar:
        title += f" · {image.similar}"
    embed = discord.Embed(title=title, description=image.caption or None, colour=EMBED_COLOUR)
    meta = image.item.memory
    if meta is not None:  # channel memory: who posted it, where, when, and the way back to it
        origin = f"Posted by <@{meta.author}> in <#{meta.channel}>, <t:{int(meta.posted_at)}:D> · [original]({meta.link})"
        embed.description = f"{image.caption}\n{origin}" if image.caption else origin
        embed.url = meta.link
    if is_web_url(image.item.url):
        embed.url = image.item.url
        embed.set_image(url=image.item.url)
    elif upload_name(image) in uploads:
        embed.set_image(url=f"attachment://{upload_name(image)}")
    else:
        embed.set_footer(text=NO_IMAGE if upload_name(image) in unavailable else NOT_ATTACHED)
    return embed


def render_reply(reply: Reply, uploads: Mapping[str, bytes], unavailable: Collection[str] = ()) -> RenderedReply:
    """The message for `reply`; `uploads` maps `upload_name(image)` to the bytes to attach (see
    `fit_uploads`), `unavailable` names the images that had no bytes to upload at all."""
    images = shown_images(reply)
    embeds = [_embed(image, uploads, unavailable) for image in images]
    used = {upload_name(i): uploads[upload_name(i)] for i in images if upload_name(i) in uploads and
            not is_web_url(i.item.url)}
    buttons: list[tuple[str, Action, int]] = [
        (f"More like #{image.rank}", image.more, index // BUTTONS_PER_ROW) for index, image in enumerate(images)
    ]
    if reply.next_page is not None:
        buttons.append(("Next page", reply.next_page, (len(images) + BUTTONS_PER_ROW - 1) // BUTTONS_PER_ROW))
    return RenderedReply("\n".join(reply.summary_lines()), embeds, used, buttons)
