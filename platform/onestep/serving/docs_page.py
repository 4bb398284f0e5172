"""The interactive API documentation pages, served from local files so they work offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, which leaves `/docs` blank on a
cluster without internet. The assets come from the `fastapi-offline` package instead (Swagger UI
5, which reads OpenAPI 3.1). Swagger UI shows image and audio responses inline but offers a video
only as a download, so a small plugin puts a `<video>` player under "Try it out" responses.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import fastapi_offline

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

# Swagger UI plugin (plain React.createElement, no build step): a video/* response body becomes
# a player; everything else renders as Swagger UI would.
_VIDEO_PLUGIN = """
function VideoResponsePlugin(system) {
  const h = system.React.createElement;
  return {wrapComponents: {responseBody: (Original) => (props) => {
    const type = props.contentType || "";
    if (/^video\\//i.test(type) && props.content instanceof Blob) {
      const src = window.URL.createObjectURL(props.content);
      return h("div", null,
        h("video", {controls: true, src: src, className: "onestep-video",
                    style: {maxWidth: "100%"}}),
        h("div", null, h("a", {href: src, download: "onestep-video"}, "Download file")));
    }
    return h(Original, props);
  }}};
}
"""


def swagger_page(title: str, openapi_url: str, assets_url: str) -> str:
    """Swagger UI for `openapi_url`, every operation expanded (the API has a handful)."""
    # validatorUrl None: Swagger UI would otherwise send the document to validator.swagger.io.
    config = {"url": openapi_url, "dom_id": "#swagger-ui", "docExpansion": "full",
              "deepLinking": True, "tryItOutEnabled": False, "validatorUrl": None}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} — API</title>
<link rel="icon" href="{assets_url}/favicon.png">
<link rel="stylesheet" href="{assets_url}/swagger-ui.css">
</head><body>
<div id="swagger-ui"></div>
<script src="{assets_url}/swagger-ui-bundle.js"></script>
<script>{_VIDEO_PLUGIN}
window.ui = SwaggerUIBundle(Object.assign({json.dumps(config)}, {{
  presets: [SwaggerUIBundle.presets.apis], plugins: [VideoResponsePlugin]}}));
</script>
</body></html>"""


def redoc_page(title: str, openapi_url: str, assets_url: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} — API reference</title>
<link rel="icon" href="{assets_url}/favicon.png">
</head><body>
<redoc spec-url="{html.escape(openapi_url)}"></redoc>
<script src="{assets_url}/redoc.standalone.js"></script>
</body></html>"""
