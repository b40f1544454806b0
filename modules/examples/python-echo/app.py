"""A flow8 module in Python, against the flow8 world (componentize-py): POST the step's
`body` (JSON) to `url` through `flow8:integration/http`, asking the host to attach the
credential bound as `api`. The host adds the credential itself (e.g. `Authorization:
Bearer ...`): the secret never enters this module, and the request may only go to that
credential's own hosts."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import http, log
from wit_world.imports.types import Error_InvalidInput, Error_Upstream, UpstreamError

MANIFEST = {
    "manifest_version": 1,
    "name": "python-echo",
    "version": "0.1.0",
    "description": "POST JSON to an API through the host; the host attaches the bound credential.",
    "input_schema": {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string"}, "method": {"type": "string"}, "body": {}},
    },
    "credentials": [{"name": "api", "kind": "component", "service": "http", "required": False}],
    # No hosts of its own: a request carrying the credential may go to that
    # credential's hosts, and nowhere else.
    "allowed_hosts": [],
}


class WitWorld(wit_world.WitWorld):
    def manifest(self) -> str:
        return json.dumps(MANIFEST)

    def execute(self, input: str) -> str:
        step = json.loads(input)
        url = step.get("url")
        if not isinstance(url, str):
            raise Err(Error_InvalidInput("`url` is required"))
        body = b"" if "body" not in step else json.dumps(step["body"]).encode()
        # Errors of the host (forbidden, access-denied, ...) are raised as `Err` and
        # end the step with their flow8 error name.
        response = http.send(
            http.Request(
                method=step.get("method", "POST"),
                url=url,
                headers=[("content-type", "application/json")],
                body=http.Body_Bytes(body) if body else http.Body_Empty(),
                timeout_ms=None,
                credential="api",
            )
        )
        log.write(log.Level.INFO, f"{response.status} from {url}")
        text = response.body.decode("utf-8", "replace")
        if response.status >= 400:
            raise Err(Error_Upstream(UpstreamError(response.status, text[:200])))
        try:
            answer = json.loads(text)
        except ValueError:
            answer = text
        return json.dumps({"status": response.status, "body": answer})
