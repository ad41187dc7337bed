"""The OpenAPI document a newcomer reads and a generator consumes: task types as an enum, an example per type, the
API-key schemes, user-facing wording, and /docs and /redoc that load with no internet access."""

import json
import re

from tasks.models import TaskType
from tasks.registry import TASK_SPECS


def test_create_lists_the_task_types_and_an_example_of_each(api_client):
    document = api_client.get("/openapi.json").json()
    body = document["paths"]["/api/v1/tasks/create/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = document["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["task_type"]["enum"] == list(TASK_SPECS)
    assert {example["value"]["task_type"] for example in body["examples"].values()} == set(TaskType)
    for example in body["examples"].values():
        assert isinstance(json.loads(example["value"]["parameters"]), dict)


def test_the_examples_are_accepted_by_the_api(api_client):
    """Each example, with the uploads its summary names, passes validation (and is then cancelled)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 60)).save(buffer, format="PNG")
    examples = api_client.get("/openapi.json").json()["paths"]["/api/v1/tasks/create/"]["post"]["requestBody"][
        "content"]["multipart/form-data"]["examples"]
    for example in examples.values():
        uploads = re.findall(r"`(\w*image)`", example["summary"])
        uploads = [name for name in uploads if name != "style_image"]  # named "instead of" a style
        response = api_client.post("/api/v1/tasks/create/", data=example["value"],
                                   files={name: (f"{name}.png", buffer.getvalue()) for name in uploads} or None)
        assert response.status_code == 201, (example, response.text)
        api_client.post(f"/api/v1/tasks/{response.json()['task_id']}/cancel/")


def test_api_keys_are_declared_as_security_schemes(api_client):
    document = api_client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["BearerKey"] == {"type": "http", "scheme": "bearer", "description": schemes["BearerKey"]
                                    ["description"]}
    assert (schemes["ApiKeyHeader"]["in"], schemes["ApiKeyHeader"]["name"]) == ("header", "X-API-Key")
    for path, method in (("/api/v1/tasks/create/", "post"), ("/api/v1/tasks/", "get"),
                         ("/api/v1/tasks/{task_id}/", "delete"), ("/api/v1/tasks/{task_id}/status/", "get")):
        assert {"BearerKey": []} in document["paths"][path][method]["security"]
    parameters = document["paths"]["/api/v1/tasks/{task_id}/status/"]["get"].get("parameters", [])
    assert "x-api-key" not in {parameter["name"].lower() for parameter in parameters}


def test_the_document_speaks_to_users(api_client):
    text = api_client.get("/openapi.json").text
    assert not re.search(r"\bseed'?s\b|\bthe seed\b", text, re.IGNORECASE), re.findall(r".{40}seed.{40}", text)


def test_docs_and_redoc_need_no_cdn(api_client):
    for page in ("/docs", "/redoc"):
        html = api_client.get(page).text
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", html)
        urls = [url for pair in assets for url in pair if url]
        assert urls and not [url for url in urls if url.startswith(("http:", "https:", "//"))], (page, urls)
        for url in urls:
            assert api_client.get(url).status_code == 200, url
