"""A `Reply` (bot.common.reply) as a Slack Block Kit message.

    section   *Results 1-5 for: cat + cartoon*   (and _heard: ..._ for voice input, and the notes:
              "Showing 10 results per page, not 50: ...")
    context   requested by @user                 (slash commands: the message is top-level)
    section   the notice, when nothing is shown
    per result:
      image     when the result has an http(s) URL Slack can fetch
      context   #1 · score 0.312 · +2 similar    and the prompt (plain text); for a channel-memory
                image: posted by @who in #channel, date · original message (its permalink)
      actions   [More like #1]                   action_id = value = "sa:more:<row>:<rank>"
    actions   [Next page]                        action_id = value = "sa:page:<key>:<offset>"

Images that live only in the dataset have no URL Slack could fetch: their JPEGs are uploaded
(`files_upload_v2`) and shared in the thread of the reply, titled "#rank · score"; the result's
context line says so. (An image block with `slack_file` would need each file to be shared with
the channel first, and Slack processes uploads asynchronously: sharing in the thread is what
works every time.)

A message holds at most 50 blocks: with three per result, `MAX_RESULTS` results fit.
"""

from __future__ import annotations

import time
from typing import Any

from bot.common.reply import Reply, ReplyImage, is_web_url, shorten
from bot.slack.text import escape
from core.memory.model import MemoryMeta

MAX_RESULTS = 15
MAX_BLOCKS = 50
ALT_TEXT_CHARS = 1000
IN_THREAD = "picture in the thread"

Block = dict[str, Any]


def needs_upload(image: ReplyImage) -> bool:
    return not is_web_url(image.item.url)


def fallback_text(reply: Reply) -> str:
    """The message's `text`: notifications and clients without blocks show it."""
    return "\n".join(reply.summary_lines())


def upload_title(image: ReplyImage) -> str:
    return f"#{image.rank} · score {image.score}"


def upload_filename(image: ReplyImage) -> str:
    return f"result-{image.rank:02d}.jpg"


def origin(meta: MemoryMeta) -> str:
    """Where a channel-memory image was posted: who, where, when (in the reader's time zone),
    and the link back to the message."""
    day = time.strftime("%Y-%m-%d", time.gmtime(meta.posted_at))
    when = f"<!date^{int(meta.posted_at)}^{{date_short_pretty}}|{day}>"
    return f"posted by <@{meta.author}> in <#{meta.channel}>, {when} · <{meta.link}|original message>"


def _button(text: str, action: str, *, primary: bool = False) -> Block:
    button: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action,
        "value": action,
    }
    if primary:
        button["style"] = "primary"
    return button


def _result_blocks(image: ReplyImage) -> list[Block]:
    blocks: list[Block] = []
    facts = [f"*#{image.rank}*", f"score {image.score}"]
    if image.similar:
        facts.append(image.similar)
    if needs_upload(image):
        facts.append(IN_THREAD)
    else:
        blocks.append(
            {
                "type": "image",
                "image_url": image.item.url,
                "alt_text": shorten(image.caption or f"result {image.rank}", ALT_TEXT_CHARS),
            }
        )
    elements: list[Block] = [{"type": "mrkdwn", "text": " · ".join(facts)}]
    if image.caption:
        elements.append({"type": "plain_text", "text": image.caption, "emoji": False})
    if image.item.memory is not None:
        elements.append({"type": "mrkdwn", "text": origin(image.item.memory)})
    blocks.append({"type": "context", "elements": elements})
    blocks.append({"type": "actions", "elements": [_button(f"More like #{image.rank}", image.more.encode())]})
    return blocks


def render_blocks(reply: Reply, *, requested_by: str | None = None) -> list[Block]:
    """The blocks of the reply; `requested_by` is the user id of a slash command's author."""
    lines = [f"*{escape(reply.header)}*"]
    if reply.heard:
        lines.append(f"_{escape(reply.heard)}_")
    lines += [escape(note) for note in reply.notes]
    blocks: list[Block] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
    if requested_by:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"requested by <@{requested_by}>"}]}
        )
    if reply.notice:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": escape(reply.notice)}})
    for image in reply.images[:MAX_RESULTS]:
        blocks += _result_blocks(image)
    if reply.next_page is not None:
        blocks.append(
            {"type": "actions", "elements": [_button("Next page", reply.next_page.encode(), primary=True)]}
        )
    assert len(blocks) <= MAX_BLOCKS, len(blocks)
    return blocks
