"""The ingest against a real S3 server (moto, a subprocess on loopback): an s3:// source listed
page by page, images uploaded with their Content-Type and linked from replies, and the DeepLake
dataset itself on S3."""

from __future__ import annotations

import json
import urllib.request

import pytest

from bot.cli import main
from core.config import ModelSettings, S3Settings, Secrets, Settings, StoreSettings
from core.errors import ConfigError
from core.query import Query, Term
from core.s3.client import S3Connection
from core.s3.locator import ImageLocator
from core.startup import open_search_service
from core.store.deeplake_store import DeepLakeStore
from ingest.runner import run_ingest
from ingest.sources.factory import parse_source
from tests.fakes.s3_server import ACCESS_KEY, REGION, SECRET_KEY, free_port
from tests.ingest_helpers import image_folder, rows_by_id
from tests.media_factory import make_picture

pytestmark = pytest.mark.usefixtures("s3_env")


def settings_for(s3_server, dataset: str, **s3: object) -> Settings:
    store = StoreSettings(dataset=dataset, s3_endpoint_url=s3_server.endpoint_url, s3_region=REGION)
    return Settings(model=ModelSettings(name="tiny"), store=store, s3=S3Settings(**s3))


def creds(s3_server) -> dict[str, str]:
    return {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "endpoint_url": s3_server.endpoint_url,
        "aws_region": REGION,
    }


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_s3_prefix_source_reads_every_page(s3_server, tmp_path):
    bucket = s3_server.new_bucket("photos")
    client = s3_server.client()
    keys = [f"trip/day{i % 2}/img{i}.jpg" for i in range(7)]
    for i, key in enumerate(keys):
        client.put_object(Bucket=bucket, Key=key, Body=make_picture(i))
    client.put_object(Bucket=bucket, Key="trip/broken.png", Body=b"not a png")
    client.put_object(Bucket=bucket, Key="trip/notes.txt", Body=b"not listed: no image suffix")
    client.put_object(Bucket=bucket, Key="trip-old/img.jpg", Body=make_picture(50))  # another prefix

    connection = S3Connection(s3_server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY)
    requests = []
    connection.client().meta.events.register("before-call.s3.ListObjectsV2", lambda **_: requests.append(1))
    source = parse_source(f"s3://{bucket}/trip", s3=connection, s3_page_size=3)
    assert sorted(ref.id for ref in source.refs()) == sorted([*keys, "trip/broken.png"])
    assert len(requests) == 3  # 8 keys, 3 per page

    dataset = str(tmp_path / "ds")
    settings = settings_for(s3_server, dataset)
    report = run_ingest(settings, f"s3://{bucket}/trip", workers=2, s3_page_size=3, progress=False)
    assert (report.summary.added, report.summary.failed) == (7, 1)
    rows = rows_by_id(dataset)
    assert sorted(rows) == sorted(keys)
    assert {row.source for row in rows.values()} == {f"s3:{bucket}/trip"}
    assert rows["trip/day0/img4.jpg"].image == make_picture(4)  # the JPEG is kept in the dataset


def test_uploaded_images_have_their_type_and_a_working_url(s3_server, tmp_path, capsys):
    bucket = s3_server.new_bucket("images")
    root = tmp_path / "images"
    ids = image_folder(root, 5, png_every=5)  # img004.png becomes a JPEG on S3
    config = tmp_path / "s3.toml"
    config.write_text(
        s3_server.config_toml()
        + f'[s3]\nbucket = "{bucket}"\nprefix = "pics/"\nupload_images = true\nurl_mode = "presigned"\n'
    )
    dataset = tmp_path / "ds"
    common = ["--config", str(config), "--dataset", str(dataset), "--model", "tiny"]
    assert main(["ingest", f"folder:{root}", *common]) == 0
    assert "added 5, skipped 0 already present, failed 0, uploaded 5 to S3" in capsys.readouterr().out

    client = s3_server.client()
    rows = rows_by_id(str(dataset))
    for id_ in ids:
        row = rows[id_]
        assert row.s3_key.startswith("pics/") and row.s3_key.endswith(".jpg")
        assert row.image[:3] == b"\xff\xd8\xff"  # a copy kept for when S3 is down
        head = client.head_object(Bucket=bucket, Key=row.s3_key)
        assert head["ContentType"] == "image/jpeg"
        body = client.get_object(Bucket=bucket, Key=row.s3_key)["Body"].read()
        assert body[:3] == b"\xff\xd8\xff"
        if id_.endswith(".jpg"):
            assert body == (root / id_).read_bytes()

    # a reply links the image: a presigned URL that fetches it without credentials
    query = root / ids[1]
    assert main(["search", *common, "--image", str(query), "--json", "--limit", "1"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert hit["id"] == ids[1] and "Signature" in hit["url"]
    assert fetch(hit["url"]) == query.read_bytes()
    # or, once the bucket is public, a public base URL plus the key
    public_read = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
        ],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(public_read))
    public = ImageLocator(f"{s3_server.endpoint_url}/{bucket}")
    with DeepLakeStore.open(str(dataset)) as store:
        [top] = store.search(store.embedding(ids[1]), 1)
    assert fetch(public.url_for(top)) == query.read_bytes()


def test_uploads_without_a_way_to_link_them_are_refused(s3_server, tmp_path):
    settings = settings_for(s3_server, str(tmp_path / "ds"), bucket="b", upload_images=True)
    with pytest.raises(ConfigError, match="public_base_url"):
        run_ingest(settings, str(tmp_path))
    with pytest.raises(ValueError, match="need a bucket"):
        S3Settings(upload_images=True)


def test_dataset_on_s3_is_written_resumed_and_searched(s3_server, tmp_path, capsys):
    bucket = s3_server.new_bucket("datasets")
    root = tmp_path / "images"
    ids = image_folder(root, 6)
    config = tmp_path / "store.toml"
    config.write_text(s3_server.config_toml())
    dataset = f"s3://{bucket}/collection"
    common = ["--config", str(config), "--dataset", dataset, "--model", "tiny"]
    assert main(["ingest", f"folder:{root}", *common, "--workers", "0"]) == 0
    assert "added 6" in capsys.readouterr().out
    assert main(["ingest", f"folder:{root}", *common, "--workers", "0"]) == 0
    assert "added 0, skipped 6 already present" in capsys.readouterr().out

    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="collection/")
    assert listed["KeyCount"] > 0  # the dataset's files are in the bucket
    assert sorted(rows_by_id(dataset, creds(s3_server))) == ids
    assert main(["search", *common, "--image", str(root / ids[2]), "--json", "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == ids[2]


async def test_replies_fall_back_to_the_dataset_while_s3_is_down(s3_server, tmp_path):
    bucket = s3_server.new_bucket("fallback")
    root = tmp_path / "images"
    ids = image_folder(root, 4)
    dataset = str(tmp_path / "ds")
    settings = settings_for(
        s3_server, dataset, bucket=bucket, upload_images=True, url_mode="presigned", health_check_seconds=3600
    )
    run_ingest(settings, f"folder:{root}", workers=0, progress=False)
    picture = (root / ids[0]).read_bytes()
    query = Query((Term("image", picture),), limit=1)

    async with open_search_service(settings, progress=False) as service:
        assert await service.locator.health.check()
        [item] = (await service.search(query)).items
        assert item.url.startswith(s3_server.endpoint_url) and fetch(item.url) == picture

    dead = settings.model_copy(
        update={"store": settings.store.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})}
    )
    async with open_search_service(dead, progress=False) as service:
        assert not await service.locator.health.check()
        [item] = (await service.search(query)).items
        assert item.url is None and await service.image_bytes(item) == picture
        # S3 answers again (here: the health check is pointed at the live server): links return
        service.locator.health.connection = S3Connection.from_settings(settings.store, Secrets.from_env())
        assert await service.locator.health.check()
        [item] = (await service.search(query)).items
        assert item.url is not None


def test_uploaded_images_can_live_only_on_s3(s3_server, tmp_path):
    bucket = s3_server.new_bucket("only")
    root = tmp_path / "images"
    image_folder(root, 2)
    dataset = str(tmp_path / "ds")
    settings = settings_for(
        s3_server, dataset, bucket=bucket, upload_images=True, url_mode="presigned", keep_in_dataset=False
    )
    run_ingest(settings, f"folder:{root}", workers=0, progress=False)
    assert {row.image for row in rows_by_id(dataset).values()} == {b""}
