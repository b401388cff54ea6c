"""What an operator exposing the server on a network relies on, beyond the API key rules of
test_server.py: HTTP framing that a proxy in front cannot read another way (request smuggling), and
header values that stay valid HTTP whatever the served model's folder is called."""
import socket
import time

from tests.server.conftest import API_KEY, require_serve_extra

require_serve_extra()

BODY = b'{"input":"a"}'


def _exchange(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Everything the server sends back on one connection for ``data``, until it closes it (or ``timeout``)."""
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    out = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, socket.timeout):
            out += b"<still open>"
    return out


def test_a_request_framed_by_both_content_length_and_transfer_encoding_is_refused_and_its_connection_closed(
        main_server):
    """RFC 9112 6.1: such a request is a request-smuggling pattern (a proxy in front that frames it by its
    Content-Length reads a different request than the server, which frames it by Transfer-Encoding), and
    the server must close the connection after it. h11 framed it by Transfer-Encoding and kept the
    connection: a request pipelined behind it was answered too. Now: a 400 naming both headers, then close."""
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    out = _exchange(main_server.url, head + chunked + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:300]
    assert out.count(b"HTTP/1.1 ") == 1 and not out.endswith(b"<still open>"), out  # the pipelined one: never read
    assert b"ambiguous_framing" in out and b"Content-Length" in out and b"Transfer-Encoding" in out, out
    for order in (b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",  # either order, any case
                  b"transfer-encoding: chunked\r\ncontent-length: 3\r\n"):
        out = _exchange(main_server.url, b"POST /health HTTP/1.1\r\nHost: x\r\n" + order + b"\r\n" + chunked)
        assert out.startswith(b"HTTP/1.1 400 ") and b"ambiguous_framing" in out, out[:300]
    # one of the two, as every client sends: answered, and the connection kept for the next request
    alone = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
             "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    out = _exchange(main_server.url, alone + chunked + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 200 ") == 2, out[:300]


def test_a_model_folder_named_outside_ascii_gives_valid_version_headers_not_500s(tmp_path):
    """A sentence-transformers folder's name starts its model_version, which every embedding answer carries
    in X-Vector-Version: a folder named in another script (or holding a control character) made every
    embedding request a 500 (Starlette encodes header values as latin-1; h11 refuses CR and LF). Now the
    header is the version with every character outside visible ASCII (and `%`) percent-encoded as UTF-8,
    which `urllib.parse.unquote` turns back into the body's `vector_version`."""
    import os
    import shutil
    from urllib.parse import unquote

    from starlette.testclient import TestClient

    from postemb_rt.model_dir import resolve
    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.routes import create_app

    def link_or_copy(src, dst):  # the base model's weights, not copied where the filesystem allows
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    folder = shutil.copytree(resolve("base").path, tmp_path / "模型 ✓\r\nX-Injected: 1", copy_function=link_or_copy)
    app = create_app(ServeConfig(model=str(folder), backend="torch", precision="fp32"))
    with TestClient(app) as c:
        deadline = time.monotonic() + 300
        while not app.state.runtime.ready:
            assert app.state.runtime.load_error is None and time.monotonic() < deadline, app.state.runtime.load_error
            time.sleep(0.1)
        version = app.state.runtime.vector_version()
        assert version.startswith("模型 ✓\r\nX-Injected: 1-"), version
        for path, body, key in (("/v1/embeddings", {"input": "a"}, "vector_version"),
                                ("/embed_full", {"inputs": "a"}, "vector_version"),
                                ("/embed", {"inputs": "a"}, None),
                                ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}}, None)):
            r = c.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
            header = r.headers["x-vector-version"]
            assert header.isascii() and header.isprintable() and " " not in header, header
            assert "x-injected" not in r.headers and unquote(header) == version, header
            if key:
                assert r.json()[key] == version


def test_a_prompt_or_model_name_past_256_characters_is_refused_without_echoing_it_whole(client):
    """An unknown name is echoed in its error (to say which one): one past NAME_MAX_CHARS is no name, and is
    refused by the schema, whose message cuts the value, so a body-sized "name" is not sent back."""
    long = "x" * 20_000  # under the test server's max_body_bytes
    for path, body, status in (("/v1/embeddings", {"input": "a", "prompt_name": long}, 400),
                               ("/v1/embeddings", {"input": "a", "model": long}, 400),
                               ("/embed", {"inputs": "a", "prompt_name": long}, 422),
                               ("/embed_full", {"inputs": ["a"], "model": long}, 422)):
        r = client.post(path, json=body)
        field = "prompt_name" if "prompt_name" in body else "model"
        assert r.status_code == status and f"`{field}`" in r.text and "256 characters" in r.text, (path, r.text)
        assert len(r.content) < 1000, (path, len(r.content))
