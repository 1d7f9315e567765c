"""`search-all search --memory SERVER_ID`: the operator searches a server's channel memory."""

import asyncio
import json

from bot.cli import main
from core.config import MediaLimits, MemorySettings, ModelSettings, Secrets, Settings
from core.encoder import Encoder
from core.memory.channels import ChannelRegistry
from core.memory.memory import ChannelMemory
from core.memory.model import PostedImage, Tenant
from core.memory.store import MemoryStore
from core.worker import EncoderWorker
from ingest.runner import run_ingest
from tests.media_factory import make_picture, picture_folder


def test_the_operator_searches_one_servers_memory_every_channel(tmp_path, capsys):
    settings = Settings.model_validate({"model": {"name": "tiny", "cache_dir": str(tmp_path / "cache")},
                                        "store": {"dataset": str(tmp_path / "dataset")}})
    run_ingest(settings, f"folder:{picture_folder(tmp_path / 'pictures', 3)}", secrets=Secrets(), workers=0,
               progress=False)
    memory_dir = tmp_path / "memory"
    server, other = Tenant("discord", "4242"), Tenant("discord", "777")

    async def remember() -> None:
        encoder = Encoder.load(ModelSettings(name="tiny"), MediaLimits())
        async with EncoderWorker(encoder) as worker:
            registry = ChannelRegistry(memory_dir / "channels.sqlite")
            memory = ChannelMemory(MemoryStore(memory_dir, model_name="tiny", dim=encoder.dim), registry, worker,
                                   MemorySettings(enabled=True, dir=memory_dir), MediaLimits())
            for tenant, channel, seed in ((server, "1", 1), (server, "2", 2), (other, "9", 3)):
                await memory.enable(tenant, channel, by="mod")
                await memory.index([PostedImage(tenant, channel, f"m{seed}", f"a{seed}", "u5", 1_767_225_600.0,
                                                f"https://discord.com/channels/{tenant.id}/{channel}/m{seed}",
                                                make_picture(seed))])
            registry.close()

    asyncio.run(remember())
    config = tmp_path / "config.toml"
    config.write_text(f"[memory]\ndir = \"{memory_dir}\"\n[search]\ncollapse_cosine = 1.0\n")  # memory off: --memory turns it on
    base = ["search", "--config", str(config), "--dataset", str(tmp_path / "dataset"), "--text", "a photo"]
    capsys.readouterr()
    assert main([*base, "--memory", "4242", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert sorted(h["memory"]["channel"] for h in hits) == ["1", "2"]  # every channel, no other server
    assert {h["memory"]["server"] for h in hits} == {"4242"} and hits[0]["memory"]["link"].startswith("https://")
    assert main([*base, "--memory", "4242"]) == 0
    printed = capsys.readouterr().out
    assert "by u5 in 1 on 2026-01-01  https://discord.com/channels/4242/1/m1" in printed
    assert main([*base, "--memory", "4242", "--source", "both", "--limit", "5", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)["hits"]
    assert sum("memory" in h for h in both) == 2 and len(both) == 5
    assert main([*base, "--source", "memory"]) == 1
    assert "needs --memory" in capsys.readouterr().err
