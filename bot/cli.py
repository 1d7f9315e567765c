"""`search-all`: the terminal front end (ingest, search) and the launcher of the chat bots.

Every user-facing error becomes one line on stderr and exit code 1 (2 for wrong usage); an
unexpected error prints one line too, with the traceback only under --verbose.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import re
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bot.common.handle import Attachment, build_query, page_size
from bot.common.reply import DEPTH_NOTICE, item_fields, result_fields
from core.config import MODEL_NAMES, MediaLimits, Secrets, Settings, load_settings
from core.errors import BadInputError, SearchAllError
from core.logs import setup_logging
from core.media.sizes import check_file_size
from core.memory.model import COLLECTION, SearchScope, Tenant
from core.query import Query
from ingest.sources import DEFAULT_SOURCE

if TYPE_CHECKING:
    from core.service import ResultItem, SearchService

log = logging.getLogger("search_all")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    model = settings.model
    if args.model:
        model = model.model_copy(update={"name": args.model})
    store = settings.store
    if args.dataset:
        store = store.model_copy(update={"dataset": args.dataset})
    settings = settings.model_copy(update={"model": model, "store": store})
    return Settings.model_validate(settings.model_dump(exclude_unset=True))  # re-validate the overrides


def positive_int(value: str) -> int:
    """An argparse type: a whole number of 1 or more (0 used to mean "the default", silently)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not 1 or more; leave it out for the default")
    return number


SAVED_NAME = re.compile(r"^\d{2,}(?:-.+|\.jpg)$")  # "01-sunset.png"; "01.jpg" from older versions


def saved_name(rank: int, item: ResultItem, data: bytes) -> str:
    """"01-sunset.png": the rank, then the result's own name; the extension of the bytes kept."""
    stem = PurePosixPath(item.id).name or f"row{item.row}"
    suffix = PurePosixPath(stem).suffix.lower()
    if data[:3] == b"\xff\xd8\xff" and suffix not in (".jpg", ".jpeg"):
        stem += ".jpg"  # the dataset's copy is a JPEG
    return f"{rank:02d}-{stem}"


async def save_results(service: SearchService, items: Sequence[ResultItem], folder: Path, *, first_rank: int) -> None:
    """Each result's image into `folder` under its own name, the original file's bytes when it is
    a local file (no re-encoding), else the dataset's copy; results of an earlier search there go."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file() and SAVED_NAME.match(old.name):
            old.unlink()
    for rank, item in enumerate(items, first_rank):
        data = None
        if item.url and item.url.startswith("file://"):
            original = Path(urllib.request.url2pathname(urlsplit(item.url).path))
            data = original.read_bytes() if original.is_file() else None
        data = data or await service.image_bytes(item)
        if data:
            (folder / saved_name(rank, item, data)).write_bytes(data)


def read_media_file(path: Path, limits: MediaLimits) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInputError(f"file {path} not found") from None
    check_file_size(size, limits, what=path.name)
    return path.read_bytes()


def query_from_args(args: argparse.Namespace, limits: MediaLimits, default_limit: int) -> Query:
    """The query of `search-all search`: each --text parsed on its own, then the files."""
    files = [
        Attachment(kind, read_media_file(path, limits), path.name)
        for kind, paths in (("image", args.image), ("audio", args.audio))
        for path in paths
    ]
    return build_query(
        args.text, files, limits=limits, limit=args.limit or default_limit, offset=args.offset,
        audio_as=args.audio_as, include=args.filter, exclude=args.exclude,
    )


def memory_tenant(value: str) -> Tenant:
    """`--memory`: a Discord server id (digits, or `discord:ID`) or a Slack workspace (`T…`, or `slack:ID`)."""
    platform, _, ident = value.rpartition(":")
    if not platform:
        platform = "discord" if ident.isdigit() else "slack"
    try:
        return Tenant(platform, ident)  # type: ignore[arg-type]
    except ValueError as exc:
        raise BadInputError(f"--memory {value}: {exc} (a Discord server id, or a Slack team id T…)") from None


async def _search(args: argparse.Namespace) -> int:
    from core.startup import open_search_service

    settings = _settings(args)
    size = page_size(args.limit, default=settings.search.default_limit, most=settings.search.max_limit)
    if size.note:  # the words every front end uses; --limit is over [search] max_limit
        print(f"note: {size.note} --offset pages on.", file=sys.stderr)
    query = query_from_args(args, settings.limits, settings.search.default_limit)
    scope = COLLECTION
    if args.memory:  # the operator's view of a server's channel memory: every channel, no permission model
        scope = SearchScope(args.source or "memory", memory_tenant(args.memory), None)
        settings = settings.model_copy(update={"memory": settings.memory.model_copy(update={"enabled": True})})
    elif args.source not in (None, "collection"):
        raise BadInputError("--source memory or both needs --memory SERVER_ID")
    async with open_search_service(settings, progress=not args.json, warm_speech=False) as service:
        result = await service.search(query, scope)
        if args.save:
            await save_results(service, result.items, args.save, first_rank=1 + query.offset)
    if args.json:
        print(
            json.dumps(
                {
                    **result_fields(result),
                    "hits": [item_fields(i) for i in result.items],
                    "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
                }
            )
        )
        return 0
    print(f"query: {result.description}")
    if result.heard:
        print(f"heard: {result.heard}")
    if result.no_good_match:
        print(f"no good match (best score {result.best_score:.3f}, cut-off {result.cutoff:.2f})")
    elif not result.items and not result.at_depth_limit:
        print("no results")
    for rank, item in enumerate(result.items, 1 + query.offset):
        where = item.url or f"row {item.row}"
        if item.memory is not None:
            posted = datetime.datetime.fromtimestamp(item.memory.posted_at, datetime.UTC).strftime("%Y-%m-%d")
            where = f"by {item.memory.author} in {item.memory.channel} on {posted}  {item.memory.link}"
        similar = f"  (+{item.similar} similar)" if item.similar else ""
        print(f"{rank:3d}. {item.score:.3f}  {item.id}  {item.text[:70]}  {where}{similar}")
    if result.at_depth_limit:
        print(DEPTH_NOTICE)
    print(f"({result.timings_ms['total']:.0f} ms)")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from ingest.runner import run_ingest

    settings = _settings(args)
    if args.ray and args.workers is not None:
        raise BadInputError("--workers sets local decoding processes; with --ray the cluster decodes")
    report = run_ingest(
        settings, args.source, workers=args.workers, batch_size=args.batch_size, follow_links=args.follow_links,
        overwrite=args.overwrite, sync=args.sync, notify=print, ray=args.ray,
    )
    print(f"{settings.store.dataset}: {report}")
    return 0


# Options whose value may start with "-" (a query term to subtract: --text "-photo").
DASH_VALUE_OPTIONS = ("--text", "--filter", "--exclude")


def _common(parser: argparse.ArgumentParser) -> None:
    # -v also after the subcommand; SUPPRESS keeps the one given before it.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log more, show tracebacks")
    parser.add_argument("--config", type=Path, help="TOML config file (see config.example.toml)")
    parser.add_argument("--dataset", help="DeepLake dataset path (overrides [store] dataset)")
    parser.add_argument(
        "--model", choices=MODEL_NAMES,
        help="overrides [model] name (search, web and bots default to the model the dataset records)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search-all", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="index images into a DeepLake dataset")
    ingest.add_argument(
        "source", nargs="?", default=DEFAULT_SOURCE,
        help=f"folder:DIR, hf:NAME[:SPLIT] or s3://bucket/prefix (default: {DEFAULT_SOURCE}, the 6k Lexica images)",
    )
    ingest.add_argument("--batch-size", type=int, help="images per batch and commit (overrides [ingest] batch_size)")
    ingest.add_argument(
        "--workers", type=int, help="decoding processes, 0 for none (overrides [ingest] workers)"
    )
    ingest.add_argument(
        "--follow-links", action="store_true",
        help="folder sources: also index links to files outside the folder (skipped by default)",
    )
    ingest.add_argument(
        "--overwrite", action="store_true",
        help="delete the dataset (once the model has loaded) and build it anew, e.g. with another --model",
    )
    ingest.add_argument(
        "--sync", action="store_true",
        help="also index changed files again (content hash, S3 ETag) and remove rows whose file is gone",
    )
    ingest.add_argument(
        "--ray", metavar="auto|ADDRESS",
        help="decode and encode on a Ray cluster (the [ray] extra): 'auto' joins RAY_ADDRESS or this"
        " machine's cluster, else starts one here; or the head's ADDRESS (host:port, ray://host:10001)",
    )
    _common(ingest)
    ingest.set_defaults(run=lambda a: _ingest(a))

    search = commands.add_parser("search", help="search the collection from the terminal")
    search.add_argument("--text", action="append", default=[], help="text, with + - and N* weights")
    search.add_argument("--image", action="append", default=[], type=Path, help="an image file")
    search.add_argument("--audio", action="append", default=[], type=Path, help="an audio file")
    search.add_argument("--limit", type=positive_int, help="number of results (at most [search] max_limit)")
    search.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    search.add_argument("--filter", action="append", default=[], help="prompt must contain WORD")
    search.add_argument("--exclude", action="append", default=[], help="prompt must not contain WORD")
    search.add_argument(
        "--audio-as", choices=["auto", "sound", "speech"], default="auto",
        help="audio as its sound, as the words spoken in it, or speech when speech is found (default)",
    )
    search.add_argument(
        "--memory", metavar="SERVER_ID",
        help="search this Discord server's (or Slack workspace's, T…) channel memory, every channel (docs/memory.md)",
    )
    search.add_argument(
        "--source", choices=["memory", "collection", "both"],
        help="with --memory: its memory (default), the shared collection, or both",
    )
    search.add_argument("--json", action="store_true", help="print one JSON object")
    search.add_argument("--save", type=Path, help="write the result images into this folder")
    _common(search)
    search.set_defaults(run=lambda a: asyncio.run(_search(a)))

    bots = commands.add_parser("bot", help="run a chat bot").add_subparsers(dest="platform", required=True)
    discord = bots.add_parser("discord", help="the Discord bot (token from DISCORD_TOKEN)")
    discord.add_argument(
        "--sync", nargs="?", const=True, default=False, type=int, metavar="GUILD_ID",
        help="register the slash commands with Discord first: globally, or in the server GUILD_ID at once",
    )
    _common(discord)
    discord.set_defaults(run=_run_discord)
    slack = bots.add_parser("slack", help="the Slack bot (SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET)")
    slack.add_argument("--socket-mode", action="store_true", help="connect with Socket Mode (SLACK_APP_TOKEN)")
    _common(slack)
    slack.set_defaults(run=_run_slack)

    web = commands.add_parser("web", help="a local web page to search from a browser")
    web.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    web.add_argument("--port", type=int, help="port (default 7860)")
    _common(web)
    web.set_defaults(run=_run_web)

    serve = commands.add_parser(
        "serve", help="the Discord bot, the Slack app and the web page (each when configured) on one model"
    )
    serve.add_argument("--web", action=argparse.BooleanOptionalAction, default=None,
                       help="also serve the web page (default: [web] enabled)")
    serve.add_argument(
        "--sync", nargs="?", const=True, default=False, type=int, metavar="GUILD_ID",
        help="register the Discord slash commands first: globally, or in the server GUILD_ID at once",
    )
    _common(serve)
    serve.set_defaults(run=_run_serve)
    return parser


def _run_discord(args: argparse.Namespace) -> int:
    from bot.discord.bot import run_discord
    from core.config import Secrets

    run_discord(_settings(args), Secrets.from_env(), sync=args.sync)
    return 0


def _run_slack(args: argparse.Namespace) -> int:
    from bot.slack.app import run_slack
    from core.config import Secrets

    run_slack(_settings(args), Secrets.from_env(), socket_mode=args.socket_mode)
    return 0


def _run_web(args: argparse.Namespace) -> int:
    from bot.web.app import run_web

    settings = _settings(args)
    port = settings.web.port if args.port is None else args.port
    run_web(settings, host=args.host or settings.web.host, port=port)
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from bot.serve import run_serve

    run_serve(_settings(args), Secrets.from_env(), web=args.web, sync=args.sync)
    return 0


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of `parser` and of its subcommands."""
    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def with_dash_values(argv: Sequence[str], options: set[str]) -> list[str]:
    """`--text -photo` as `--text=-photo`: argparse reads a value that starts with "-" as an
    unknown option, but a query may well start with a minus (a term to subtract)."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        value = next(args, None) if arg in DASH_VALUE_OPTIONS else None
        if value is None:
            out.append(arg)
        elif value.startswith("-") and value not in options:
            out.append(f"{arg}={value}")
        else:
            out += [arg, value]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(with_dash_values(argv, option_strings(parser)))
    level = logging.INFO if args.verbose or args.command in ("bot", "web", "serve") else logging.WARNING
    secrets = Secrets.from_env().values()
    setup_logging(level=level, secrets=secrets)
    log_format = "text"

    def fatal(line: str) -> None:
        """The last line of a failed run: plain on stderr, or a JSON log line when logs are JSON."""
        if log_format == "json":
            log.error("%s", line)
        else:
            print(line, file=sys.stderr)

    try:
        log_format = load_settings(args.config).ops.log_format
        if log_format != "text":
            setup_logging(level=level, fmt=log_format, secrets=secrets)
        return args.run(args)
    except SearchAllError as exc:
        fatal(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        fatal("interrupted")
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback when asked
        if args.verbose:
            log.exception("internal error")
        fatal(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for details)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
