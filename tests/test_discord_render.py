"""Rendering a reply for Discord: image URLs or uploads within the upload limit, buttons, lines."""

from __future__ import annotations

import io

from PIL import Image

from bot.common.reply import MoreLikeThis, NextPage, build_reply, decode_action
from bot.discord.render import (
    MAX_EMBEDS,
    NO_IMAGE,
    NOT_ATTACHED,
    downscale_jpeg,
    fit_uploads,
    needs_upload,
    render_reply,
    upload_name,
)
from core.service import ResultItem, SearchResult
from tests.media_factory import make_jpeg


def item(row: int, url: str | None = None, text: str = "", similar: int = 0) -> ResultItem:
    return ResultItem(id=f"p{row}.jpg", score=0.5 - row / 100, text=text, url=url, row=row, width=64, height=48,
                      similar=similar)


def result(items: list[ResultItem], *, has_more: bool = False, heard: str = "", best: float | None = None,
           cutoff: float = -1.0) -> SearchResult:
    return SearchResult(description="a red car", items=items, best_score=best if best is not None else 0.5,
                        cutoff=cutoff, offset=0, limit=max(1, len(items)), has_more=has_more,
                        page_key="0123456789abcdef", heard=heard)


def test_web_urls_are_shown_directly_and_other_images_are_uploaded():
    items = [item(0, "https://images.example.com/a.jpg"), item(1, "file:///data/b.jpg"), item(2, None),
             item(3, None)]
    reply = build_reply(result(items))
    to_upload = needs_upload(reply)
    assert [i.item.row for i in to_upload] == [1, 2, 3]
    uploads = {upload_name(to_upload[0]): b"jpeg-1", upload_name(to_upload[1]): b"jpeg-2"}
    rendered = render_reply(reply, uploads, unavailable={upload_name(to_upload[2])})

    web, uploaded, also_uploaded, missing = (e.to_dict() for e in rendered.embeds)
    assert web["image"]["url"] == web["url"] == "https://images.example.com/a.jpg"
    assert uploaded["image"]["url"] == f"attachment://{upload_name(to_upload[0])}"
    assert also_uploaded["image"]["url"] == f"attachment://{upload_name(to_upload[1])}"
    assert "image" not in missing and missing["footer"]["text"] == NO_IMAGE
    assert rendered.uploads == uploads
    assert [f.filename for f in rendered.files()] == list(uploads)


def test_an_embed_says_when_its_image_did_not_fit():
    reply = build_reply(result([item(0)]))
    (embed,) = render_reply(reply, {}).embeds
    assert embed.footer.text == NOT_ATTACHED and not embed.image


def test_embeds_show_rank_score_similar_and_the_shortened_prompt():
    long_prompt = "a castle " * 60
    reply = build_reply(result([item(0, text=long_prompt, similar=2)]), caption_chars=50)
    (embed,) = render_reply(reply, {}).embeds
    assert embed.title == f"#1 · score {reply.images[0].score} · +2 similar"
    assert embed.description == reply.images[0].caption and len(embed.description) <= 50


def test_uploads_share_the_budget_and_large_images_are_downscaled():
    small = make_jpeg(64, 48, seed=1)
    large = make_jpeg(800, 600, seed=2, quality=95)
    budget = 3 * len(small) + len(large) // 4
    kept = fit_uploads([("a.jpg", small), ("b.jpg", large), ("c.jpg", small)], budget)

    assert kept["a.jpg"] == small and kept["c.jpg"] == small
    assert len(kept["b.jpg"]) < len(large)
    assert sum(len(v) for v in kept.values()) <= budget
    with Image.open(io.BytesIO(kept["b.jpg"])) as downscaled:
        assert downscaled.format == "JPEG" and max(downscaled.size) < 800


def test_a_file_that_cannot_fit_is_left_out_and_leaves_its_share_to_the_next():
    small, large = make_jpeg(64, 48, color=(200, 30, 30)), make_jpeg(800, 600, seed=2)
    budget = len(small) + 400
    assert downscale_jpeg(large, budget // 2) is None  # not even the smallest thumbnail fits its share
    assert fit_uploads([("b.jpg", large), ("a.jpg", small)], budget) == {"a.jpg": small}
    assert fit_uploads([("a.jpg", small)], 0) == {}
    assert fit_uploads([("a.jpg", b"not a jpeg" * 100)], 100) == {}


async def test_buttons_fit_in_rows_of_five_and_carry_the_actions():
    items = [item(row) for row in range(12)]
    reply = build_reply(result(items, has_more=True))
    rendered = render_reply(reply, {})

    assert len(rendered.embeds) == MAX_EMBEDS
    view = rendered.view()
    assert view is not None
    rows: dict[int, list[str]] = {}
    for child in view.children:
        rows.setdefault(child.row, []).append(child.item.custom_id)
    assert [len(ids) for _, ids in sorted(rows.items())] == [5, 5, 1]
    ids = [i for _, row in sorted(rows.items()) for i in row]
    assert [decode_action(i) for i in ids] == [MoreLikeThis(r, r + 1) for r in range(MAX_EMBEDS)] + [
        NextPage("0123456789abcdef", len(items))
    ]
    assert all(len(i) <= 100 for i in ids)
    assert [label for label, _, _ in rendered.buttons][:2] == ["More like #1", "More like #2"]
    assert [label for label, _, _ in rendered.buttons][-1] == "Next page"


async def test_what_was_heard_and_why_nothing_is_shown():
    heard = render_reply(build_reply(result([item(0)], heard="a red car")), {})
    assert "heard: a red car" in heard.content.splitlines()

    nothing = render_reply(build_reply(result([], best=0.1, cutoff=0.2)), {})
    assert nothing.content.splitlines()[-1].startswith("No good match")
    assert nothing.embeds == [] and nothing.view() is None and "files" not in nothing.send_kwargs()
