"""``/docs`` that works offline: Swagger UI's assets come from the PyPI package
``swagger-ui-bundle`` (installed with the ``[serve]`` extra) and are served by this server under
``/docs-assets/``, instead of FastAPI's default page, which loads them from a CDN and is blank
on a machine without internet access. ReDoc (CDN only) is not offered."""
from __future__ import annotations

ASSETS = "/docs-assets"


def add_docs(app, title: str) -> None:
    """Mount Swagger UI's files at ``ASSETS`` and answer ``GET /docs`` with a page that loads
    only them and ``app.openapi_url``."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} - API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")
