"""`search-all`: the terminal front end (ingest, search) and the launcher of the chat bots.

Every user-facing error becomes one line on stderr and exit code 1 (2 for wrong usage); an
unexpected error prints one line too, with the traceback only under --verbose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config import MediaLimits, Settings, load_settings
from core.errors import BadInputError, SearchAllError
from core.media.sizes import check_file_size
from core.query import Query, Term, parse_text_terms

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
    return Settings.model_validate(settings.model_dump())  # re-validate the overrides


def read_media_file(path: Path, limits: MediaLimits) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInputError(f"file {path} not found") from None
    check_file_size(size, limits, what=path.name)
    return path.read_bytes()


def build_query(args: argparse.Namespace, limits: MediaLimits, default_limit: int) -> Query:
    terms: list[Term] = []
    for text in args.text:
        terms += parse_text_terms(text, max_chars=limits.max_query_chars, max_terms=limits.max_terms)
    for modality, paths in (("image", args.image), ("audio", args.audio)):
        for path in paths:
            terms.append(Term(modality, read_media_file(path, limits), 1.0, label=path.name))
    return Query(
        terms=tuple(terms),
        limit=args.limit or default_limit,
        offset=args.offset,
        include=tuple(args.filter),
        exclude=tuple(args.exclude),
    )


async def _search(args: argparse.Namespace) -> int:
    from core.app import open_search_service

    settings = _settings(args)
    query = build_query(args, settings.limits, settings.search.default_limit)
    async with open_search_service(settings, progress=not args.json) as service:
        result = await service.search(query)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for rank, item in enumerate(result.items, 1):
                data = await service.image_bytes(item)
                if data:
                    (args.save / f"{rank:02d}.jpg").write_bytes(data)
    if args.json:
        print(
            json.dumps(
                {
                    "query": query.describe(),
                    "hits": [
                        {"id": i.id, "score": round(i.score, 6), "text": i.text, "url": i.url}
                        for i in result.items
                    ],
                    "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
                }
            )
        )
        return 0
    print(f"query: {query.describe()}")
    if not result.items:
        best = "" if result.best_score is None else f" (best score {result.best_score:.3f})"
        print(f"no good match{best}")
    for rank, item in enumerate(result.items, 1 + query.offset):
        where = item.url or f"row {item.row}"
        print(f"{rank:3d}. {item.score:.3f}  {item.id}  {item.text[:70]}  {where}")
    print(f"({result.timings_ms['total']:.0f} ms)")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from core.app import store_creds
    from core.config import Secrets
    from core.deeplake_store import DeepLakeStore
    from core.encoder import Encoder
    from core.imagebind.configs import get_config
    from ingest.pipeline import ingest
    from ingest.sources import parse_source

    settings = _settings(args)
    source = parse_source(args.source)
    store = DeepLakeStore.open_or_create(
        settings.store.dataset,
        model_name=settings.model.name,
        dim=get_config(settings.model.name).out_dim,
        creds=store_creds(settings, Secrets.from_env()),
    )
    try:
        encoder = Encoder.load(settings.model, settings.limits)
        summary = ingest(
            source.items(),
            source_name=source.name,
            store=store,
            encoder=encoder,
            batch_size=args.batch_size,
        )
    finally:
        store.close()
    print(f"{settings.store.dataset}: {summary}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (see config.example.toml)")
    parser.add_argument("--dataset", help="DeepLake dataset path (overrides [store] dataset)")
    parser.add_argument("--model", choices=["imagebind_huge", "tiny"], help="overrides [model] name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search-all", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="index images into a DeepLake dataset")
    ingest.add_argument(
        "source", nargs="?", default="hf:xfh/lexica_6k",
        help="folder:DIR or hf:NAME[:SPLIT] (default: hf:xfh/lexica_6k, the 6k Lexica images)",
    )
    ingest.add_argument("--batch-size", type=int, default=16)
    _common(ingest)
    ingest.set_defaults(run=lambda a: _ingest(a))

    search = commands.add_parser("search", help="search the collection from the terminal")
    search.add_argument("--text", action="append", default=[], help="text, with + - and N* weights")
    search.add_argument("--image", action="append", default=[], type=Path, help="an image file")
    search.add_argument("--audio", action="append", default=[], type=Path, help="an audio file")
    search.add_argument("--limit", type=int, help="number of results")
    search.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    search.add_argument("--filter", action="append", default=[], help="prompt must contain WORD")
    search.add_argument("--exclude", action="append", default=[], help="prompt must not contain WORD")
    search.add_argument("--json", action="store_true", help="print one JSON object")
    search.add_argument("--save", type=Path, help="write the result images into this folder")
    _common(search)
    search.set_defaults(run=lambda a: asyncio.run(_search(a)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except SearchAllError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback when asked
        if args.verbose:
            log.exception("internal error")
        print(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
