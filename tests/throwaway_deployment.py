"""The throwaway task type's deployment (tests/throwaway_task_type.py): it lays the task's one further upload
over `image`, and says under which name that upload reached it."""

from collections.abc import AsyncIterator
from typing import Any

from PIL import Image
from ray import serve

from deployments.events import InvalidInput, open_image, progress_event, result_event


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ThrowawayOverlay:
    async def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                      extra_images: dict[str, bytes] | None = None) -> AsyncIterator[dict]:
        yield progress_event(0, "Laying the overlay")
        if len(extra_images or {}) != 1:
            raise InvalidInput("the overlay needs exactly one further image")
        ((name, overlay_png),) = extra_images.items()
        base = open_image(image).convert("RGBA")
        overlay = open_image(overlay_png).convert("RGBA").resize(base.size)
        yield result_event(Image.blend(base, overlay, parameters["opacity"]),
                           {"model": "pillow-blend", "overlay_upload": name, "opacity": parameters["opacity"],
                            "size": list(base.size)})
