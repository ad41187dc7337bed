"""The API as a Ray Serve ingress deployment (import path `serve.ingress:app` in config/serve*.yaml)."""

from ray import serve as ray_serve

from serve.app import create_app


@ray_serve.deployment
@ray_serve.ingress(create_app())
class APIIngress:
    """HTTP only: records and queues jobs; the model deployments are reached by Celery workers, not from here."""


app = APIIngress.bind()
