"""Django service as people run it: `gunicorn examples.realworld.djangoapp:application`
(2 sync workers, see gunicorn_sync_conf), DjangoInstrumentor called before the WSGI
application is built (as its docs say, in wsgi.py), requests + RequestsInstrumentor for
outbound calls, django-prometheus's middlewares and its /metrics view (multiprocess mode)."""

from __future__ import annotations

import os

import django
import requests
from django.conf import settings
from django.http import Http404, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.decorators.http import require_GET, require_POST

from examples.realworld.otelsetup import downstream_url

DOWNSTREAM_PATH = "/inventory/reserve"
ITEMS = {1: "apple", 2: "pear", 42: "answer"}

# A settings module of its own would be the usual layout; one file keeps the example small.
if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "realworld-example-not-secret"),
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django_prometheus"],
        # django-prometheus's README: Before first, After last.
        MIDDLEWARE=["django_prometheus.middleware.PrometheusBeforeMiddleware",
                    "django_prometheus.middleware.PrometheusAfterMiddleware"],
        USE_TZ=True,
    )

from opentelemetry.instrumentation.django import DjangoInstrumentor  # noqa: E402
from opentelemetry.instrumentation.requests import RequestsInstrumentor  # noqa: E402

DjangoInstrumentor().instrument()  # inserts its middleware into settings.MIDDLEWARE
RequestsInstrumentor().instrument()
django.setup()
_session = requests.Session()


@require_GET
def healthz(request):
    return HttpResponse("ok")


@require_GET
def hello(request):
    return JsonResponse({"greeting": "hello"})


@require_GET
def item(request, item_id: int):
    if item_id not in ITEMS:
        raise Http404("no such item")
    return JsonResponse({"id": item_id, "name": ITEMS[item_id]})


@require_POST
def orders(request):
    import json
    try:
        order = json.loads(request.body or b"{}")
    except ValueError:
        order = {}
    r = _session.post(downstream_url(DOWNSTREAM_PATH), json={"item_id": order.get("item_id")},
                      timeout=5)
    return JsonResponse({"reserved": r.ok}, status=201 if r.ok else 502)


urlpatterns = [
    path("healthz", healthz),
    path("hello", hello),
    path("items/<int:item_id>", item),
    path("orders", orders),
    path("", include("django_prometheus.urls")),  # /metrics
]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
