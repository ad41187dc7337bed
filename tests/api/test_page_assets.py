"""What the web page loads beside the API: a sample picture and a thumbnail per built-in style (rendered once by
the style network from MODELS_DIR, then served from DATA_DIR)."""

import io

import httpx
from PIL import Image

from deployments.catalogue import STYLE_NAMES


def test_the_sample_picture_is_a_png(api_client):
    response = api_client.get("/sample.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (384, 288)


def test_each_style_has_a_thumbnail_rendered_once(api_client, settings):
    listed = api_client.get("/api/v1/styles/").json()["styles"]
    assert [style["name"] for style in listed] == list(STYLE_NAMES)
    first = api_client.get(listed[3]["thumbnail_url"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(first.content)).size == (128, 96)
    cached = sorted(path.name for path in (settings.data_dir / "style-thumbnails").iterdir())
    assert cached == sorted(f"{name}.jpg" for name in STYLE_NAMES)
    others = {api_client.get(style["thumbnail_url"]).content for style in listed}
    assert len(others) == len(STYLE_NAMES)  # 26 different pictures


def test_thumbnails_of_unknown_styles_or_without_weights_are_404(api_client, uvicorn_api, tmp_path):
    unknown = api_client.get("/api/v1/styles/style-99/thumbnail.jpg")
    assert unknown.status_code == 404 and unknown.json() == {"error": "Unknown style 'style-99'"}
    url = uvicorn_api(MODELS_DIR=str(tmp_path / "no-models"), DATA_DIR=str(tmp_path / "data"))
    missing = httpx.get(f"{url}/api/v1/styles/style-0/thumbnail.jpg", timeout=60)
    assert missing.status_code == 404 and "style weights are not installed" in missing.json()["error"]
