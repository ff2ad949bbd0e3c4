"""The page at /: three fixed files of the package, read once, served from memory.

No route maps request data to a file: the paths are fixed here. The page's script calls the
API with the user's token (if the server wants one); a strict Content-Security-Policy keeps it
to this origin.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

router = APIRouter(include_in_schema=False)
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/page.js": ("page.js", "text/javascript; charset=utf-8"),
         "/page.css": ("page.css", "text/css; charset=utf-8")}
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
           "base-uri 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


@lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return resources.files("protlm.serve").joinpath("static", name).read_bytes()


def _route(path: str, name: str, media: str):
    async def serve_file() -> Response:
        return Response(_read(name), media_type=media, headers=HEADERS)

    router.add_api_route(path, serve_file, methods=["GET"], name=name)


for _path, (_name, _media) in FILES.items():
    _route(_path, _name, _media)
