"""Channel memory: the images a server or workspace posted, searchable only by who may read them.

Opt-in per channel. A front end (bot/discord, bot/slack) turns a channel on or off, hands over
each image posted there (live or from history), tells which messages were deleted, and, at
query time, the set of channels the asking person may read; the core knows nothing of Discord or
Slack and applies that set before the top-k.

- `model.py`: the value types (`Tenant`, `PostedImage`, `MemoryMeta`, `MemoryHit`,
  `SearchScope`, `ChannelStatus`).
- `channels.py`: `ChannelRegistry`, which channels are on, since when, by whom, and the
  progress of their backfill (SQLite).
- `store.py`: `MemoryStore`, one DeepLake dataset per tenant (docs/architecture.md, "Channel
  memory", says why), searched exactly in memory with the channel filter before the top-k.
- `memory.py`: `ChannelMemory`, what a front end calls: enable / disable / status / forget,
  index images (through the encoder worker, behind interactive queries), backfill bookkeeping.

docs/memory.md says what is stored, where, for how long and how it is removed.
"""
