"""The server's log lines: uvicorn's go through the commands' one stderr handler (text or JSON), and
--access-log writes one line per request without -v."""
import json

from tests.server.conftest import ServerProc, ready_until_done, require_serve_extra, serve_argv

httpx = require_serve_extra()


def test_access_log_without_verbose_writes_one_json_line_per_request():
    argv = serve_argv("--access-log")
    at = argv.index("serve")
    argv[at:at] = ["--log-format", "json"]  # an option of `postemb` itself: before the command
    for srv in ready_until_done(ServerProc(argv)):
        assert httpx.get(srv.url + "/health?probe=access-log", timeout=10).status_code == 200
    logged = [json.loads(line) for line in srv.lines if line.startswith("{")]
    access = [r for r in logged if r["logger"] == "uvicorn.access" and "/health?probe=access-log" in r["message"]]
    assert len(access) == 1 and access[0]["level"] == "INFO" and '" 200' in access[0]["message"], srv.lines
    plain = [line for line in srv.lines if not line.startswith(("{", "postemb serve: "))]
    assert not plain, f"lines neither JSON nor the command's own: {plain}"
