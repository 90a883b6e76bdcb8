"""A fake of the providers' server-side tools, strict at the wire: a real HTTP server on 127.0.0.1
answering OpenAI's Responses API with file search, web search, code interpreter and image generation,
Anthropic's Messages API with web search, web fetch and code execution (plain and streamed), and
Gemini's generateContent with grounding with Google Search (plain and streamed).

Strict as the real services: a tool must be declared as the API documents it (file search with
``vector_store_ids``, code interpreter with a ``container``, Anthropic's versioned tool types with
their names, Gemini's ``googleSearch``), else a 400 in the provider's error shape; the tools run
only when declared. Payload shapes: the official SDKs' types (openai-python
``types/responses/response_{file_search,code_interpreter}_tool_call.py``, anthropic-sdk-python
``types/server_tool_use_block.py``, ``container.py``, ``raw_message_delta_event.py``, google-genai
``GroundingMetadata``) and docs/provider-usage.md (section 6).
"""

from __future__ import annotations

import json
import re
import uuid

from .upstream import FakeHandler, LocalServer, Received, send_json

# What the fake's tools do per call, fixed so that a test can work out the price by hand.
FILE_SEARCH_QUERIES = [["refund policy"], ["refund policy 2026", "returns window"]]  # one item per search
CODE_RUNS = 3                    # code_interpreter_call items per response, in one container
WEB_SEARCHES = 2                 # searches per call (OpenAI items, Anthropic's server_tool_use count)
WEB_FETCHES = 1                  # Anthropic web fetches per call
# The image generation tool's picture, base64 (a 1x1 PNG).
IMAGE_RESULT = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
GROUNDING_QUERIES = ["uefa euro 2024 winner", "euro 2024 final score"]
OPENAI_USAGE = {"input_tokens": 5200, "input_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 0},
                "output_tokens": 410, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5610}
ANTHROPIC_START = {"input_tokens": 2679, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                   "output_tokens": 3, "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0}}
ANTHROPIC_FINAL = {"input_tokens": 10682, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                   "output_tokens": 510}  # input grows as results are read: message_delta's is the one billed
GEMINI_USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 240, "toolUsePromptTokenCount": 160,
                "totalTokenCount": 412, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}]}
_ANTHROPIC_TOOLS = {"web_search": ("web_search_20250305", "web_search_20260209"),
                    "web_fetch": ("web_fetch_20250910", "web_fetch_20260209"),
                    "code_execution": ("code_execution_20250522", "code_execution_20250825",
                                       "code_execution_20260120")}
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # a model snapshot's name, as the answer gives every model's
_GEMINI_CALL = re.compile(r"/v1beta/models/([^/:]+):(generateContent|streamGenerateContent)")


class ToolsProvider(LocalServer):
    def __init__(self) -> None:
        self.containers: list[str] = []  # every container it created
        super().__init__(_handler(self))
        self.received: list[Received] = []

    def __enter__(self) -> ToolsProvider:
        return super().__enter__()

    def new_container(self) -> str:
        self.containers.append(f"cntr_{uuid.uuid4().hex}")
        return self.containers[-1]


class BadRequest(Exception):
    pass


def _handler(provider: ToolsProvider):
    class Handler(FakeHandler):
        def do_POST(self) -> None:
            provider.received.append(received := self.receive())
            body, headers = received.body, received.headers
            path = self.path.split("?")[0]
            try:
                request = json.loads(body)
                if not isinstance(request, dict):
                    raise ValueError
            except ValueError:
                send_json(self, 400, {"error": {"message": "We could not parse the JSON body of your request.",
                                           "type": "invalid_request_error", "param": None, "code": None}})
                return
            try:
                if path == "/v1/responses":
                    _responses(self, provider, request)
                elif path == "/v1/messages":
                    _messages(self, provider, request, headers)
                elif found := _GEMINI_CALL.fullmatch(path):
                    _gemini(self, found.group(1), found.group(2), request, "alt=sse" in self.path)
                else:
                    send_json(self, 404, {"error": {"message": f"Invalid URL (POST {path})",
                                               "type": "invalid_request_error", "param": None, "code": None}})
            except BadRequest as exc:
                self._bad_request(path, str(exc))

        def _bad_request(self, path: str, message: str) -> None:
            if path == "/v1/messages":
                send_json(self, 400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}})
            elif path.startswith("/v1beta/"):
                send_json(self, 400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}})
            else:
                send_json(self, 400, {"error": {"message": message, "type": "invalid_request_error", "param": "tools",
                                           "code": None}})

        def sse(self, events: list[tuple[str | None, dict]]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for name, data in events:
                piece = (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


# --- OpenAI Responses --------------------------------------------------------------------------

def _responses(handler, provider: ToolsProvider, request: dict) -> None:
    if not isinstance(request.get("model"), str) or "input" not in request:
        raise BadRequest("Missing required parameter: 'model' and 'input'.")
    output: list[dict] = []
    for n, tool in enumerate(request.get("tools") or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "file_search":
            if not isinstance(tool.get("vector_store_ids"), list) or not tool["vector_store_ids"]:
                raise BadRequest(f"Missing required parameter: 'tools[{n}].vector_store_ids'.")
            output += [{"id": f"fs_{uuid.uuid4().hex}", "type": "file_search_call", "status": "completed",
                        "queries": queries, "results": None} for queries in FILE_SEARCH_QUERIES]
        elif kind == "code_interpreter":
            container = tool.get("container")
            if isinstance(container, dict) and container.get("type") == "auto":
                container_id = provider.new_container()
            elif isinstance(container, str) and container.startswith("cntr_"):
                container_id = container
            else:
                raise BadRequest(f"Missing required parameter: 'tools[{n}].container'.")
            output += [{"id": f"ci_{uuid.uuid4().hex}", "type": "code_interpreter_call", "status": "completed",
                        "code": f"print({k} * 2)", "container_id": container_id,
                        "outputs": [{"type": "logs", "logs": str(k * 2)}]} for k in range(CODE_RUNS)]
        elif kind == "image_generation":  # the image model's tokens are in no usage of the answer
            output.append({"id": f"ig_{uuid.uuid4().hex}", "type": "image_generation_call", "status": "completed",
                           "result": IMAGE_RESULT})
        elif kind in ("web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"):
            output += [{"id": f"ws_{uuid.uuid4().hex}", "type": "web_search_call", "status": "completed",
                        "action": {"type": "search", "query": "weather"}} for _ in range(WEB_SEARCHES)]
        else:
            raise BadRequest(f"Invalid value for 'tools[{n}].type': {kind!r}.")
    output.append({"id": f"msg_{uuid.uuid4().hex}", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": "Done.", "annotations": [], "logprobs": []}]})
    response = {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": 1764763200,
                "status": "completed", "output": output,
                "model": request["model"] if _DATED.search(request["model"]) else request["model"] + "-2024-08-06",
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": request.get("tools") or [],
                "service_tier": "default", "store": True, "usage": OPENAI_USAGE}
    if not request.get("stream"):
        send_json(handler, 200, response)
        return
    created = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [("response.created", {"type": "response.created", "sequence_number": 0, "response": created})]
    for index, item in enumerate(output):
        events += [("response.output_item.added", {"type": "response.output_item.added", "output_index": index,
                                                   "sequence_number": len(events), "item": item}),
                   ("response.output_item.done", {"type": "response.output_item.done", "output_index": index,
                                                  "sequence_number": len(events) + 1, "item": item})]
    events.append(("response.completed", {"type": "response.completed", "sequence_number": len(events),
                                          "response": response}))
    handler.sse(events)


# --- Anthropic Messages ------------------------------------------------------------------------

def _messages(handler, provider: ToolsProvider, request: dict, headers: dict) -> None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", headers.get("anthropic-version", "")):  # 2023-06-01, or newer
        raise BadRequest("anthropic-version: header is required")
    if not isinstance(request.get("model"), str) or "max_tokens" not in request or not request.get("messages"):
        raise BadRequest("model, max_tokens and messages: field required")
    declared = set()
    for n, tool in enumerate(request.get("tools") or []):
        name = tool.get("name") if isinstance(tool, dict) else None
        if name not in _ANTHROPIC_TOOLS or tool.get("type") not in _ANTHROPIC_TOOLS[name]:
            raise BadRequest(f"tools.{n}: Input tag '{tool.get('type') if isinstance(tool, dict) else tool}' "
                             f"found using 'type' does not match any of the expected tags")
        declared.add(name)
    content, container = _anthropic_content(provider, declared)
    usage = {**ANTHROPIC_FINAL, "service_tier": "standard",
             "server_tool_use": {"web_search_requests": WEB_SEARCHES if "web_search" in declared else 0,
                                 "web_fetch_requests": WEB_FETCHES if "web_fetch" in declared else 0}}
    message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
               "model": request["model"], "content": content, "stop_reason": "end_turn", "stop_sequence": None,
               "container": container, "usage": usage}
    if not request.get("stream"):
        send_json(handler, 200, message)
        return
    start = {**message, "content": [], "stop_reason": None, "container": None, "usage": ANTHROPIC_START}
    events: list[tuple[str | None, dict]] = [("message_start", {"type": "message_start", "message": start}),
                                              ("ping", {"type": "ping"})]
    for index, block in enumerate(content):
        events += [("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}),
                   ("content_block_stop", {"type": "content_block_stop", "index": index})]
    delta = {"stop_reason": "end_turn", "stop_sequence": None, "container": container}
    events += [("message_delta", {"type": "message_delta", "delta": delta, "usage": {
                   key: value for key, value in usage.items() if key != "service_tier"}}),
               ("message_stop", {"type": "message_stop"})]
    handler.sse(events)


def _anthropic_content(provider: ToolsProvider, declared: set[str]) -> tuple[list[dict], dict | None]:
    content: list[dict] = []

    def use(name: str, tool_input: dict, result: dict) -> None:
        block_id = f"srvtoolu_{uuid.uuid4().hex[:24]}"
        content.append({"type": "server_tool_use", "id": block_id, "name": name, "input": tool_input})
        content.append({**result, "tool_use_id": block_id})

    for _ in range(WEB_SEARCHES if "web_search" in declared else 0):
        use("web_search", {"query": "claude shannon birth date"},
            {"type": "web_search_tool_result", "content": [{
                "type": "web_search_result", "url": "https://en.wikipedia.org/wiki/Claude_Shannon",
                "title": "Claude Shannon", "encrypted_content": "EqgfCioIARgBIiQ3YTAw", "page_age": None}]})
    for _ in range(WEB_FETCHES if "web_fetch" in declared else 0):
        use("web_fetch", {"url": "https://example.com/article"},
            {"type": "web_fetch_tool_result", "content": {
                "type": "web_fetch_result", "url": "https://example.com/article", "retrieved_at": None,
                "content": {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                           "data": "An article."},
                            "title": "Article", "citations": None}}})
    container = None
    if "code_execution" in declared:
        use("bash_code_execution", {"command": "python -c 'print(6 * 7)'"},
            {"type": "bash_code_execution_tool_result", "content": {
                "type": "bash_code_execution_result", "stdout": "42\n", "stderr": "", "return_code": 0,
                "content": []}})
        container = {"id": provider.new_container(), "expires_at": "2026-12-03T17:00:00Z", "skills": None}
    content.append({"type": "text", "text": "Here is what I found.", "citations": None})
    return content, container


# --- Gemini generateContent with grounding -------------------------------------------------------

def _gemini(handler, model: str, method: str, request: dict, sse: bool) -> None:
    if not handler.headers.get("x-goog-api-key"):
        send_json(handler, 401, {"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}})
        return
    if not isinstance(request.get("contents"), list) or not request["contents"]:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    tools = request.get("tools") or []
    grounded = False
    for n, tool in enumerate(tools):
        if not isinstance(tool, dict) or set(tool) - {"googleSearch", "google_search", "functionDeclarations"}:
            raise BadRequest(f"Invalid JSON payload received. Unknown name in 'tools[{n}]'.")
        grounded = grounded or "googleSearch" in tool or "google_search" in tool
    candidate: dict = {"content": {"parts": [{"text": "Spain won Euro 2024."}], "role": "model"},
                       "finishReason": "STOP", "index": 0}
    if grounded:
        candidate["groundingMetadata"] = {
            "webSearchQueries": GROUNDING_QUERIES,
            "searchEntryPoint": {"renderedContent": "<style>.container{}</style><div>...</div>"},
            "groundingChunks": [{"web": {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/x",
                                         "title": "uefa.com"}}],
            "groundingSupports": [{"segment": {"startIndex": 0, "endIndex": 20, "text": "Spain won Euro 2024."},
                                   "groundingChunkIndices": [0]}]}
    usage = GEMINI_USAGE if grounded else {**GEMINI_USAGE, "toolUsePromptTokenCount": 0}
    answer = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
              "responseId": uuid.uuid4().hex[:20]}
    if method == "generateContent":
        send_json(handler, 200, answer)
        return
    if not sse:
        raise BadRequest("this fake streams with alt=sse only, as the SDK asks")
    first = {"candidates": [{"content": {"parts": [{"text": "Spain "}], "role": "model"}, "index": 0}],
             "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 2, "totalTokenCount": 14},
             "modelVersion": model, "responseId": answer["responseId"]}
    handler.sse([(None, first), (None, answer)])
