"""API keys, ownership, rate limits and idempotency, on the real app, database and Redis."""

import io
import json
import time
import uuid

import httpx
from PIL import Image

from tasks.keys import create_key, revoke_key

CREATE = "/api/v1/tasks/create/"


def _png(colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _create(client, key: str | None = None, idempotency_key: str | None = None, prompt="cut", colour=(1, 2, 3)):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return client.post(CREATE, headers=headers, data={"task_type": "background_removal", "prompt": prompt},
                       files={"image": ("a.png", _png(colour))})


def test_a_task_is_visible_only_to_the_key_that_made_it(api_client, database):
    alice, _ = create_key("alice")
    bob, _ = create_key("bob")
    created = _create(api_client, alice)
    assert created.status_code == 201, created.text
    task_id = created.json()["task_id"]
    for path in ("status", "result"):
        assert api_client.get(f"/api/v1/tasks/{task_id}/{path}/", headers={"X-API-Key": bob}).status_code == 404
        assert api_client.get(f"/api/v1/tasks/{task_id}/{path}/").status_code == 404  # no key: not yours either
    assert api_client.post(f"/api/v1/tasks/{task_id}/cancel/", headers={"X-API-Key": bob}).status_code == 404
    mine = api_client.get(f"/api/v1/tasks/{task_id}/status/", headers={"Authorization": f"Bearer {alice}"})
    assert mine.status_code == 200 and mine.json()["task_id"] == task_id
    assert api_client.post(f"/api/v1/tasks/{task_id}/cancel/", headers={"X-API-Key": alice}).status_code == 200


def test_unknown_and_revoked_keys_are_401(api_client, database):
    key, record = create_key("soon revoked")
    assert _create(api_client, "bai_not-a-real-key").status_code == 401
    assert revoke_key(record.prefix)
    response = _create(api_client, key)
    assert response.status_code == 401 and response.json()["error"] == "Invalid or revoked API key"


def test_keys_are_required_when_configured(uvicorn_api):
    url = uvicorn_api(API_KEYS_REQUIRED="true")
    key, _ = create_key("required")
    anonymous = httpx.get(f"{url}/api/v1/tasks/{uuid.uuid4()}/status/")
    assert anonymous.status_code == 401 and "API key is required" in anonymous.json()["error"]
    assert httpx.get(f"{url}/api/v1/tasks/{uuid.uuid4()}/status/", headers={"X-API-Key": key}).status_code == 404


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(api_client, database):
    for _ in range(2):  # the limit is per clock minute: redo the round if it straddled a minute boundary
        minute = int(time.time() // 60)
        key, _ = create_key("limited", rate_limit_per_minute=3)
        responses = [api_client.get(f"/api/v1/tasks/{uuid.uuid4()}/status/", headers={"X-API-Key": key})
                     for _ in range(4)]
        if int(time.time() // 60) == minute:
            break
    assert [response.status_code for response in responses] == [404, 404, 404, 429]
    assert 1 <= int(responses[-1].headers["Retry-After"]) <= 60
    assert "Rate limit reached" in responses[-1].json()["error"]
    other, _ = create_key("unaffected", rate_limit_per_minute=3)
    assert api_client.get(f"/api/v1/tasks/{uuid.uuid4()}/status/", headers={"X-API-Key": other}).status_code == 404


def test_a_key_with_too_many_queued_tasks_gets_429_until_one_finishes(api_client, settings, monkeypatch):
    monkeypatch.setattr(settings, "max_queued_per_key", 2)
    key, _ = create_key("busy")
    token = f"cap-{uuid.uuid4()}"
    queued = [_create(api_client, key, colour=(0, 0, 0)), _create(api_client, key, token, colour=(1, 0, 0))]
    assert [response.status_code for response in queued] == [201, 201]
    refused = _create(api_client, key, colour=(9, 0, 0))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert "2 of yours are queued or running" in refused.json()["error"]
    replayed = _create(api_client, key, token, colour=(1, 0, 0))  # a replay queues nothing: never refused
    assert replayed.status_code == 201 and replayed.headers["Idempotent-Replayed"] == "true"
    other, _ = create_key("not busy")
    elsewhere = _create(api_client, other)  # another key has a cap of its own
    assert elsewhere.status_code == 201
    api_client.post(f"/api/v1/tasks/{elsewhere.json()['task_id']}/cancel/", headers={"X-API-Key": other})
    first = queued[0].json()["task_id"]
    assert api_client.post(f"/api/v1/tasks/{first}/cancel/", headers={"X-API-Key": key}).status_code == 200
    again = _create(api_client, key, colour=(10, 0, 0))
    assert again.status_code == 201
    for task_id in (queued[1].json()["task_id"], again.json()["task_id"]):
        api_client.post(f"/api/v1/tasks/{task_id}/cancel/", headers={"X-API-Key": key})


def test_tasks_without_a_key_are_capped_by_client_address(api_client, settings, monkeypatch):
    from tasks.service import get_task

    created = _create(api_client, None, colour=(7, 7, 7))
    assert get_task(uuid.UUID(created.json()["task_id"])).submitter == "ip:testclient"
    monkeypatch.setattr(settings, "max_queued_per_key", 1)  # this client has at least the task above queued
    refused = _create(api_client, None, colour=(8, 8, 8))
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    api_client.post(f"/api/v1/tasks/{created.json()['task_id']}/cancel/")


def test_idempotency_key_replays_the_same_task_and_refuses_a_different_body(api_client, database):
    key, _ = create_key("idempotent")
    token = f"order-{uuid.uuid4()}"
    first = _create(api_client, key, token)
    again = _create(api_client, key, token)
    assert first.status_code == again.status_code == 201
    assert first.json()["task_id"] == again.json()["task_id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers

    different = _create(api_client, key, token, prompt="something else")
    assert different.status_code == 409
    assert different.json()["details"] == {"task_id": first.json()["task_id"]}
    other_image = _create(api_client, key, token, colour=(200, 0, 0))
    assert other_image.status_code == 409

    other_owner = _create(api_client, None, token)  # the same header from another caller is another request
    assert other_owner.status_code == 201 and other_owner.json()["task_id"] != first.json()["task_id"]
    for task_id in {first.json()["task_id"], other_owner.json()["task_id"]}:
        headers = {"X-API-Key": key} if task_id == first.json()["task_id"] else {}
        api_client.post(f"/api/v1/tasks/{task_id}/cancel/", headers=headers)


def test_parameters_are_part_of_the_idempotent_request(api_client, database):
    token = f"params-{uuid.uuid4()}"
    headers = {"Idempotency-Key": token}
    first = api_client.post(CREATE, headers=headers, files={"image": ("a.png", _png())},
                            data={"task_type": "background_removal", "prompt": "p", "parameters": "{}"})
    masked = api_client.post(CREATE, headers=headers, files={"image": ("a.png", _png())},
                             data={"task_type": "background_removal", "prompt": "p",
                                   "parameters": json.dumps({"return_mask": True})})
    assert first.status_code == 201 and masked.status_code == 409
    api_client.post(f"/api/v1/tasks/{first.json()['task_id']}/cancel/")


def test_webhooks_to_private_addresses_are_refused_by_default(uvicorn_api):
    url = uvicorn_api(WEBHOOK_ALLOW_PRIVATE="false")
    for target in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://[::1]/hook", "ftp://example.com/x"):
        response = httpx.post(f"{url}{CREATE}", data={"task_type": "background_removal", "prompt": "p",
                                                     "webhook_url": target}, files={"image": ("a.png", _png())})
        assert response.status_code == 400, (target, response.text)
        assert response.json()["details"] == {"webhook_url": target}
