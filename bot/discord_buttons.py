"""The buttons under a Discord reply: "More like #N" and "Next page".

Their custom ids are `bot.actions` ids, which carry everything needed to run them, so they are
registered as a `DynamicItem`: any bot instance, including one started after the reply was sent,
turns a press into an `Action` and hands it to the bot (`ActionRunner.run_search_action`).
"""

from __future__ import annotations

import re
from typing import Any, Protocol, cast

import discord

from bot.actions import Action, NextPage, decode_action

TEMPLATE = re.compile(r"sa:(?:more|page):[0-9a-f:]{1,80}")


class ActionRunner(Protocol):
    async def run_search_action(self, interaction: discord.Interaction, action: Action) -> None: ...


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=TEMPLATE):
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
        await cast(ActionRunner, interaction.client).run_search_action(interaction, self.action)
